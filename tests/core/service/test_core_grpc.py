"""The real core over gRPC: health, reflection, Generate (text, tokens, chat), errors, cancel."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.waiting import StepsHeldUntilAbort, async_wait_until

READY_SERVICE = "tandem.v1.Inference"


@pytest.fixture(scope="module")
async def core(grpc_core):
    """The session's in-process core (conftest `grpc_core`): (server, stub, channel)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_core.port}")
    grpc_core.server.readiness_before_load = grpc_core.health_before_load
    yield grpc_core.server, pb_grpc.InferenceStub(channel), channel
    await channel.close()


def error_info(err: grpc.aio.AioRpcError) -> tuple[str, str]:
    """(reason, field) from the google.rpc details of an error."""
    raw = dict(err.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    reason = field = ""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field
    return reason, field


async def wait_until_idle(engine, timeout_s: float = 60.0) -> None:
    """Wait for the engine to hold no request (aborts land within a step); fail otherwise."""
    await async_wait_until(lambda: engine.num_unfinished == 0, "the engine idle", timeout_s)
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert engine.scheduler.allocator.num_in_use == 0  # every KV page came back


async def collect(stub, request: pb.GenerateRequest, **kwargs) -> list[pb.GenerateResponse]:
    return [chunk async for chunk in stub.Generate(request, **kwargs)]


async def test_health_not_serving_before_warmup_and_serving_after(core):
    server, _, channel = core
    assert server.readiness_before_load == (health_pb2.HealthCheckResponse.NOT_SERVING,
                                            health_pb2.HealthCheckResponse.SERVING)
    health = health_pb2_grpc.HealthStub(channel)
    after = await health.Check(health_pb2.HealthCheckRequest(service=READY_SERVICE))
    assert after.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(core):
    _, _, channel = core
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        assert {READY_SERVICE, "grpc.health.v1.Health"} <= names
        break


async def test_generate_text_streams_tokens_text_and_usage(core):
    _, stub, _ = core
    chunks = await collect(stub, pb.GenerateRequest(
        text="hello world", sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_tokens=12, ignore_eos=True)),
        metadata=[("x-request-id", "req-42")])
    assert len(chunks) >= 2 and all(c.request_id == "req-42" for c in chunks)
    token_ids = [t for c in chunks for ch in c.choices for t in ch.token_ids]
    assert len(token_ids) == 12
    assert chunks[-1].choices[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert chunks[-1].usage.completion_tokens == 12
    text = "".join(ch.text for c in chunks for ch in c.choices)
    detok = await stub.Detokenize(pb.DetokenizeRequest(token_ids=token_ids))
    assert text == detok.text
    tokenized = await stub.Tokenize(pb.TokenizeRequest(text="hello world"))
    assert chunks[-1].usage.prompt_tokens == len(tokenized.token_ids)


async def test_token_and_chat_inputs_match_their_text_forms(core):
    _, stub, _ = core
    greedy = pb.SamplingParams(temperature=0.0)
    stopping = pb.StoppingCriteria(max_tokens=6, ignore_eos=True)
    chat = pb.ChatInput(messages=[pb.ChatMessage(role="user", content=[pb.ContentPart(text="hi")])])
    tokenized = await stub.Tokenize(pb.TokenizeRequest(chat=chat))
    from_chat = await collect(stub, pb.GenerateRequest(chat=chat, sampling=greedy,
                                                       stopping=stopping))
    from_tokens = await collect(stub, pb.GenerateRequest(
        tokens=pb.TokenIds(ids=tokenized.token_ids), sampling=greedy, stopping=stopping))

    def ids(chunks):
        return [t for c in chunks for ch in c.choices for t in ch.token_ids]

    assert ids(from_chat) == ids(from_tokens) and len(ids(from_chat)) == 6
    assert tokenized.tokens[0] == "<|begin_of_text|>"


async def test_seeded_sampling_is_reproducible(core):
    _, stub, _ = core
    request = pb.GenerateRequest(text="once upon", n=2, sampling=pb.SamplingParams(
        temperature=1.0, top_p=0.9, seed=7), stopping=pb.StoppingCriteria(max_tokens=10,
                                                                            ignore_eos=True))
    first, second = await asyncio.gather(collect(stub, request), collect(stub, request))

    def per_choice(chunks):
        result = {0: [], 1: []}
        for chunk in chunks:
            for choice in chunk.choices:
                result[choice.index].extend(choice.token_ids)
        return result

    assert per_choice(first) == per_choice(second)
    assert per_choice(first)[0] != per_choice(first)[1]  # sibling choices draw differently
    largest_seed = pb.GenerateRequest()
    largest_seed.CopyFrom(request)
    largest_seed.sampling.seed = 2**64 - 1
    chunks = await collect(stub, largest_seed)
    assert chunks[-1].usage.completion_tokens == 20


async def test_stop_string_ends_the_stream_without_the_stop_text(core):
    _, stub, _ = core
    base = pb.GenerateRequest(text="abc", sampling=pb.SamplingParams(temperature=0.0),
                              stopping=pb.StoppingCriteria(max_tokens=30, ignore_eos=True))
    full = "".join(ch.text for c in await collect(stub, base) for ch in c.choices)
    stop = full[5:8]
    assert len(stop) == 3 and full.find(stop) == 5
    request = pb.GenerateRequest()
    request.CopyFrom(base)
    request.stopping.stop.append(stop)
    chunks = await collect(stub, request)
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert text == full[:5]
    assert chunks[-1].choices[-1].finish_reason == pb.FINISH_REASON_STOP
    assert chunks[-1].choices[-1].stop_string == stop


@pytest.mark.parametrize("request_kwargs, code, reason, field", [
    ({"model": "nope", "text": "x"}, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", "model"),
    ({"text": "x", "sampling": pb.SamplingParams(top_p=0.0)}, grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_PARAMETER", "top_p"),
    ({"text": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "prompt"),
    ({"tokens": pb.TokenIds(ids=[1, 99999])}, grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_PARAMETER", "prompt"),
    ({"text": "x " * 200}, grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", "prompt"),
    ({"text": "x", "stopping": pb.StoppingCriteria(max_tokens=500)},
     grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", "prompt"),
    ({"chat": pb.ChatInput(messages=[pb.ChatMessage(role="user", content=[pb.ContentPart(
        image_url=pb.ImageUrl(url="http://x/y.png"))])])}, grpc.StatusCode.INVALID_ARGUMENT,
     "UNSUPPORTED", "messages"),
    ({"chat": pb.ChatInput(messages=[pb.ChatMessage(role="user", content=[pb.ContentPart(
        text="hi")])], chat_template="{% for i in range(9999999) %}x{% endfor %}")},
     grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED", "chat_template"),
    ({"chat": pb.ChatInput(messages=[])}, grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_PARAMETER", "messages"),
    ({"text": "x" * 5_000_000}, grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED",
     "prompt"),
    ({"text": "x", "n": 17}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMETER", "n"),
])
async def test_bad_requests_get_typed_errors(core, request_kwargs, code, reason, field):
    _, stub, _ = core
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, pb.GenerateRequest(**request_kwargs))
    assert caught.value.code() == code
    assert error_info(caught.value) == (reason, field)


async def test_cancelling_a_stream_stops_its_generation(core, monkeypatch):
    """The engine is held after its first step until the cancel reaches it as an abort: a
    no-op cancel would let all 100 tokens be generated; a real one stops after a step or two."""
    server, stub, _ = core
    engine = server.servicer.engine
    held = StepsHeldUntilAbort(engine, monkeypatch)
    generated_before = engine.num_generated_tokens
    max_tokens = 100
    call = stub.Generate(pb.GenerateRequest(
        text="long", stopping=pb.StoppingCriteria(max_tokens=max_tokens, ignore_eos=True)))
    await call.read()  # generation has started
    assert engine.num_unfinished == 1
    call.cancel()
    await async_wait_until(held.aborted.is_set, "the cancel reaching the engine as an abort")
    await wait_until_idle(engine)
    generated = engine.num_generated_tokens - generated_before
    assert generated <= 3 < max_tokens, generated  # the held step, and at most one more


async def test_a_repeated_prompt_reports_cached_tokens_in_usage(core):
    _, stub, _ = core
    request = pb.GenerateRequest(
        tokens=pb.TokenIds(ids=list(range(5, 45))), cache_salt="usage-test",
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_tokens=2, ignore_eos=True))
    cold = [response async for response in stub.Generate(request)]
    warm = [response async for response in stub.Generate(request)]
    assert cold[-1].usage.cached_tokens == 0
    assert warm[-1].usage.cached_tokens == 32  # whole pages of the first 39 tokens
    def token_ids(responses):  # outputs queued together reach the client as one chunk
        return [token for r in responses for choice in r.choices for token in choice.token_ids]

    assert token_ids(warm) == token_ids(cold) and len(token_ids(cold)) == 2


async def test_models_and_capabilities(core):
    _, stub, _ = core
    models = await stub.ListModels(pb.ListModelsRequest())
    assert [m.id for m in models.models] == ["tiny-llama", "all-MiniLM-L6-v2"]
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())  # the default: the first model
    assert info.id == "tiny-llama"
    assert info.max_model_len == 128 and info.compilations_after_warmup == 0
    assert list(info.capabilities) == [pb.CAPABILITY_GENERATE, pb.CAPABILITY_SCORE]
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # the decoder cannot embed
        await stub.Embed(pb.EmbedRequest(model="tiny-llama",
                                         inputs=[pb.ScoreInput(text="hi")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value) == ("UNSUPPORTED", "model")


async def test_logprobs_carry_token_text_and_exact_bytes(core):
    _, stub, _ = core
    chunks = await collect(stub, pb.GenerateRequest(
        text="héllo 日本", sampling=pb.SamplingParams(temperature=0.0), logprobs=True,
        top_logprobs=3, stopping=pb.StoppingCriteria(max_tokens=10, ignore_eos=True)))
    entries = [e for c in chunks for ch in c.choices for e in ch.logprobs]
    text = "".join(ch.text for c in chunks for ch in c.choices)
    assert len(entries) == 10
    for entry in entries:  # greedy: the chosen token is the most likely one
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token_id == entry.token_id
        assert entry.logprob <= 0 and entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
    joined = b"".join(e.token_bytes for e in entries)
    assert joined.decode("utf-8", errors="replace") == text


async def test_a_failing_step_fails_its_requests_and_the_core_keeps_serving(core, monkeypatch):
    server, stub, _ = core
    runner = server.servicer.engine.runner
    real_dispatch, calls = runner.dispatch, []

    def fail_once(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("injected failure")
        return real_dispatch(batch)

    monkeypatch.setattr(runner, "dispatch", fail_once)
    request = pb.GenerateRequest(text="x", stopping=pb.StoppingCriteria(max_tokens=3,
                                                                        ignore_eos=True))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, request)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "injected failure" in caught.value.details()
    chunks = await collect(stub, request)
    assert chunks[-1].usage.completion_tokens == 3
    assert server.servicer.engine.num_unfinished == 0


async def test_concurrent_calls_with_the_same_request_id_both_complete(core):
    server, stub, _ = core
    request = pb.GenerateRequest(text="same id", sampling=pb.SamplingParams(temperature=0.0),
                                 stopping=pb.StoppingCriteria(max_tokens=5, ignore_eos=True))
    first, second = await asyncio.wait_for(asyncio.gather(
        collect(stub, request, metadata=[("x-request-id", "dup")]),
        collect(stub, request, metadata=[("x-request-id", "dup")])), timeout=60)
    assert first[-1].usage.completion_tokens == second[-1].usage.completion_tokens == 5
    assert server.servicer.engine.num_unfinished == 0


async def test_admission_beyond_capacity_is_resource_exhausted_with_retry_info(core, monkeypatch):
    from dataclasses import replace

    server, stub, _ = core
    engine = server.servicer.engine
    monkeypatch.setattr(engine, "engine_config", replace(engine.engine_config, max_waiting=0))
    long_request = pb.GenerateRequest(text="busy", stopping=pb.StoppingCriteria(
        max_tokens=100, ignore_eos=True))
    calls = [stub.Generate(long_request) for _ in range(engine.engine_config.max_num_seqs)]
    for call in calls:
        await call.read()  # admitted and running
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub, pb.GenerateRequest(text="one more"))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value)[0] == "OVERLOADED"
    status = status_pb2.Status.FromString(
        dict(caught.value.trailing_metadata())["grpc-status-details-bin"])
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    for call in calls:
        call.cancel()
    await wait_until_idle(engine)


async def test_one_tokenizer_and_one_resolved_configuration_serve_every_rpc(core):
    """The served model holds the tokenizer its engine detokenizes with (Generate, Tokenize,
    Score and the grammars read the same object), and the configuration the engine runs with
    is the one the service validates against: resolved once, not read back or re-derived."""
    server, stub, _ = core
    model = server.servicer.models[server.servicer.expected[0]]
    engine = model.generator
    assert engine.tokenizer is model.tokenizer
    assert engine.engine_config.is_resolved
    assert engine.runner.engine_config is engine.engine_config
    assert engine.runner.num_pages == engine.engine_config.num_pages
    assert model.policy.max_model_len == engine.engine_config.max_model_len
    info = await stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.max_model_len, info.dtype) == (engine.engine_config.max_model_len,
                                                engine.engine_config.dtype)


async def test_readiness_turns_red_while_the_engine_is_stalled_and_green_once_it_moves(
        core, monkeypatch):
    """The stall detector: with a request waiting and the engine's step held, readiness
    ("tandem.v1.Inference") turns NOT_SERVING within the stall timeout while liveness ("")
    stays SERVING; once the step goes on, readiness is SERVING again and the request finishes."""
    import threading

    server, stub, channel = core
    health = health_pb2_grpc.HealthStub(channel)
    engine = server.servicer.engine
    monkeypatch.setattr(server, "stall_timeout_s", 1.0)
    release, dispatch = threading.Event(), engine.runner.dispatch

    def held_dispatch(batch):
        release.wait(timeout=120)
        return dispatch(batch)

    async def status(service: str) -> int:
        return (await health.Check(health_pb2.HealthCheckRequest(service=service))).status

    monkeypatch.setattr(engine.runner, "dispatch", held_dispatch)
    request = pb.GenerateRequest(text="stall", stopping=pb.StoppingCriteria(
        max_tokens=3, ignore_eos=True))
    call = asyncio.ensure_future(collect(stub, request))
    try:
        await async_wait_until(
            lambda: _is(status("tandem.v1.Inference"), health_pb2.HealthCheckResponse.NOT_SERVING),
            "readiness NOT_SERVING while the step is held", timeout_s=30)
        assert await status("") == health_pb2.HealthCheckResponse.SERVING
        assert engine.stalled_for_s() > 1.0
    finally:
        release.set()
    responses = await call
    assert sum(len(choice.token_ids) for r in responses for choice in r.choices) == 3
    await async_wait_until(
        lambda: _is(status("tandem.v1.Inference"), health_pb2.HealthCheckResponse.SERVING),
        "readiness SERVING once the engine moves", timeout_s=30)
    assert engine.stalled_for_s() == 0.0


async def _is(status, expected: int) -> bool:
    return await status == expected


async def test_get_load_reports_every_engine_and_follows_the_queue(core, monkeypatch):
    """GetLoad: one entry per served model; with the engine's step held, every request is
    running or waiting, and the waiting ones' prompt tokens (none cached) are the waiting-
    uncached tokens; once they finish the engine is idle again. A Generate call's first and
    last chunks carry a snapshot of the same load."""
    import threading

    server, stub, _ = core
    names = server.servicer.expected
    engine = server.servicer.engine
    idle = {load.model: load for load in (await stub.GetLoad(pb.GetLoadRequest())).engines}
    assert set(idle) == set(names)
    assert (idle[names[0]].num_requests_running, idle[names[0]].num_requests_waiting) == (0, 0)
    assert idle[names[0]].num_kv_pages == engine.engine_config.num_pages
    assert 0.0 <= idle[names[0]].prefix_cache_hit_rate <= 1.0
    release, dispatch = threading.Event(), engine.runner.dispatch

    def held_dispatch(batch):
        release.wait(timeout=120)
        return dispatch(batch)

    monkeypatch.setattr(engine.runner, "dispatch", held_dispatch)
    prompt_len, rows = 40, engine.engine_config.max_num_seqs
    requests = [pb.GenerateRequest(tokens=pb.TokenIds(ids=[(97 * i + 13 * j) % 500 + 5
                                                           for j in range(prompt_len)]),
                                   stopping=pb.StoppingCriteria(max_tokens=4, ignore_eos=True))
                for i in range(rows + 2)]
    calls = [asyncio.ensure_future(collect(stub, request)) for request in requests]

    async def queued():
        (load,) = (await stub.GetLoad(pb.GetLoadRequest(model=names[0]))).engines
        admitted = load.num_requests_running + load.num_requests_waiting == len(requests)
        return load if admitted and load.num_requests_running >= 1 else None

    try:
        load = await async_wait_until(queued, "every request running or waiting", timeout_s=60)
        assert load.num_requests_waiting >= 2  # more requests than rows
        assert load.num_waiting_uncached_tokens == load.num_requests_waiting * prompt_len
        assert load.kv_cache_usage > 0
    finally:
        release.set()
    results = await asyncio.gather(*calls)
    for responses in results:
        assert responses[0].HasField("load") and responses[-1].HasField("load")
        assert not any(response.HasField("load") for response in responses[1:-1])
    assert max(r[0].load.num_requests_running for r in results) >= 1
    after = (await stub.GetLoad(pb.GetLoadRequest(model=names[0]))).engines[0]
    assert (after.num_requests_running, after.num_requests_waiting) == (0, 0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetLoad(pb.GetLoadRequest(model="no-such-model"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_tokenizer_streams_files_a_gateway_tokenizes_with(core, tmp_path, monkeypatch):
    """The reassembled files equal the model directory's, each chunk carries its file's
    SHA-256, and a tokenizer loaded from them tokenizes text and chats exactly as the core."""
    import hashlib

    from transformers import AutoTokenizer

    from core.service import tokenizer_files

    monkeypatch.setattr(tokenizer_files, "CHUNK_BYTES", 4096)  # several chunks per big file
    server, stub, _ = core
    files: dict[str, bytearray] = {}
    chunks = [chunk async for chunk in stub.GetTokenizer(pb.GetTokenizerRequest())]
    for chunk in chunks:
        data = files.setdefault(chunk.file_name, bytearray())
        assert chunk.offset_bytes == len(data) and len(chunk.data) <= 4096
        data += chunk.data
        assert chunk.last_chunk == (len(data) == chunk.size_bytes)
    model_dir = server.config.model_dir
    assert "tokenizer.json" in files and "config.json" not in files
    assert list(files) == sorted(files)
    for name, data in files.items():
        assert bytes(data) == (model_dir / name).read_bytes()
        assert {c.sha256 for c in chunks if c.file_name == name} == {
            hashlib.sha256(data).hexdigest()}
    assert sum(c.file_name == "tokenizer.json" for c in chunks) > 1
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    gateway = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    messages = [{"role": "user", "content": "Hello there, tokenizer!"}]
    chat = pb.ChatInput(messages=[pb.ChatMessage(role="user", content=[pb.ContentPart(
        text=messages[0]["content"])])])
    core_ids = (await stub.Tokenize(pb.TokenizeRequest(chat=chat))).token_ids
    rendered = gateway.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert list(core_ids) == gateway(rendered, add_special_tokens=False)["input_ids"]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.GetTokenizer(pb.GetTokenizerRequest(model="nope")):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
