"""Routing hooks over real gRPC on the session's in-process core (conftest `grpc_core`): Abort
stops Generate calls by the `x-request-id` their callers sent (their pages come back, their
streams end with FINISH_REASON_ABORT, other calls run on, unknown ids are reported, not
errors); a GenerateRequest's `priority` reaches the engine's request, and is range-checked."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.core.service.test_core_grpc import collect, error_info, wait_until_idle
from tests.waiting import async_wait_until

MAX_TOKENS = 60


@pytest.fixture(scope="module")
async def stub(grpc_core):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_core.port}")
    yield pb_grpc.InferenceStub(channel)
    await channel.close()


def _long(text: str, n: int = 1) -> pb.GenerateRequest:
    return pb.GenerateRequest(text=text, n=n, stopping=pb.StoppingCriteria(
        max_tokens=MAX_TOKENS, ignore_eos=True))


async def test_abort_stops_the_named_calls_and_reports_unknown_ids(grpc_core, stub, monkeypatch):
    """With the engine's step held, two calls are in it: "to-abort" (two choices)
    and "to-keep". Abort(["to-abort", "never-seen"]) reports the first aborted and the second
    unknown; once the steps go on, every choice of "to-abort" ends with ABORT far short of its
    max_tokens, "to-keep" runs to its length, and every KV page comes back."""
    engine = grpc_core.server.servicer.engine
    release, dispatch = threading.Event(), engine.runner.dispatch
    steps = []

    def held_dispatch(batch):
        steps.append(len(batch.chunks))
        release.wait(timeout=120)
        return dispatch(batch)

    monkeypatch.setattr(engine.runner, "dispatch", held_dispatch)
    try:
        aborted_call = asyncio.ensure_future(collect(
            stub, _long("abort me", n=2), metadata=(("x-request-id", "to-abort"),)))
        kept_call = asyncio.ensure_future(collect(
            stub, _long("keep me"), metadata=(("x-request-id", "to-keep"),)))
        await async_wait_until(lambda: engine.num_unfinished == 3 and steps,
                               "three choices in the engine, its step held")
        answer = await stub.Abort(pb.AbortRequest(request_ids=["to-abort", "never-seen"]))
        assert list(answer.aborted_request_ids) == ["to-abort"]
        assert list(answer.unknown_request_ids) == ["never-seen"]
    finally:
        release.set()
    aborted, kept = await aborted_call, await kept_call
    finishes = {choice.index: choice.finish_reason for r in aborted for choice in r.choices
                if choice.finish_reason}
    assert finishes == {0: pb.FINISH_REASON_ABORT, 1: pb.FINISH_REASON_ABORT}
    assert aborted[-1].usage.completion_tokens < MAX_TOKENS  # stopped, not run out
    assert kept[-1].choices[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert sum(len(choice.token_ids) for r in kept for choice in r.choices) == MAX_TOKENS
    await wait_until_idle(engine)
    # the call has ended: its id is no longer known
    again = await stub.Abort(pb.AbortRequest(request_ids=["to-abort"]))
    assert list(again.unknown_request_ids) == ["to-abort"]


async def test_abort_of_nothing_answers_empty(stub):
    answer = await stub.Abort(pb.AbortRequest())
    assert not answer.aborted_request_ids and not answer.unknown_request_ids


async def test_priority_reaches_the_engine_and_is_range_checked(grpc_core, stub, monkeypatch):
    engine = grpc_core.server.servicer.engine
    release, dispatch = threading.Event(), engine.runner.dispatch
    seen: list[int] = []

    def held_dispatch(batch):
        seen.extend(engine._tracked[chunk.request_id].request.priority for chunk in batch.chunks)
        release.wait(timeout=120)
        return dispatch(batch)

    monkeypatch.setattr(engine.runner, "dispatch", held_dispatch)
    request = pb.GenerateRequest(text="urgent", priority=-3, stopping=pb.StoppingCriteria(
        max_tokens=2, ignore_eos=True))
    call = asyncio.ensure_future(collect(stub, request))
    try:
        await async_wait_until(lambda: seen, "its first step")
    finally:
        release.set()
    await call
    assert seen[0] == -3
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, pb.GenerateRequest(text="x", priority=10**7))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value) == ("INVALID_PARAMETER", "priority")


async def test_token_out_mode_sends_ids_only(stub):
    """detokenize false: the same greedy token ids as a normal call, no text on any chunk (the
    caller detokenizes: Detokenize of the ids gives the normal call's text); stop strings, which
    need the text, are refused naming them (tools: tests/core/service/test_reasoning.py)."""
    request = pb.GenerateRequest(tokens=pb.TokenIds(ids=[5, 17, 42, 99, 7]),
                                 stopping=pb.StoppingCriteria(max_tokens=12, ignore_eos=True))
    request.sampling.temperature = 0.0
    normal = await collect(stub, request)
    token_out = pb.GenerateRequest()
    token_out.CopyFrom(request)
    token_out.detokenize = False
    bare = await collect(stub, token_out)
    ids = [i for response in bare for choice in response.choices for i in choice.token_ids]
    assert ids == [i for r in normal for c in r.choices for i in c.token_ids] and len(ids) == 12
    assert all(not choice.text for response in bare for choice in response.choices)
    assert bare[-1].choices[-1].finish_reason == pb.FINISH_REASON_LENGTH
    text = (await stub.Detokenize(pb.DetokenizeRequest(token_ids=ids))).text
    assert text == "".join(c.text for r in normal for c in r.choices)
    stopped = pb.GenerateRequest()
    stopped.CopyFrom(token_out)
    stopped.stopping.stop.append("x")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub, stopped)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(info.value)[1] == "stop"
