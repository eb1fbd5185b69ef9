"""Async scheduling (core/engine/async_step.py) on a real tiny model: the same greedy tokens as
the synchronous loop, with stops, EOS, max_tokens, aborts and penalties; nothing emitted after a
request ends; every page back; nothing compiled after warm-up. Each comparison runs one engine
twice, with `engine.async_scheduling` off and on, and checks that steps really were dispatched
from the device tokens of the step before."""

from __future__ import annotations

import queue
import time
from dataclasses import replace

import numpy as np
import pytest

from core.config import EngineConfig
from core.engine.request import (
    FinishReason,
    Request,
    RequestOutput,
    SamplingParams,
    StoppingParams,
)
from tests.waiting import wait_until

GREEDY = SamplingParams(temperature=0.0, seed=1)


@pytest.fixture(scope="module")
def engine(tiny_models):
    from core.engine.startup import create_engine

    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=256, max_num_seqs=8, max_num_batched_tokens=128,
        async_scheduling=True))
    yield engine
    engine.stop()


def request(request_id: str, prompt: list[int], max_tokens: int, **stopping) -> Request:
    sampling = stopping.pop("sampling", GREEDY)
    stopping.setdefault("ignore_eos", True)
    return Request(request_id, list(prompt), sampling,
                   StoppingParams(max_tokens=max_tokens, **stopping),
                   want_logprobs=True, top_logprobs=2)


def prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(5, 500, size=n).tolist() for n in lengths]


def run(engine, requests: list[Request], abort_after: dict[str, int] | None = None,
        timeout_s: float = 120.0) -> dict[str, list[RequestOutput]]:
    """Add all requests at once; collect every output until each has finished (aborting
    `abort_after`'s requests, with notify, once they have sent that many outputs); then wait
    until the engine is idle with every page back and check nothing more came."""
    abort_after = dict(abort_after or {})
    outputs: queue.Queue[RequestOutput] = queue.Queue()
    for each in requests:
        engine.add_request(each, outputs.put)
    collected: dict[str, list[RequestOutput]] = {each.request_id: [] for each in requests}
    unfinished = set(collected)
    deadline = time.monotonic() + timeout_s
    while unfinished:
        output = outputs.get(timeout=max(0.1, deadline - time.monotonic()))
        assert output.error is None, output.error
        assert output.request_id in unfinished, f"an output after the end: {output}"
        collected[output.request_id].append(output)
        if output.finish_reason is not None:
            unfinished.discard(output.request_id)
        elif len(collected[output.request_id]) == abort_after.get(output.request_id):
            engine.abort(output.request_id, notify=True)
    wait_until(lambda: engine.num_unfinished == 0 and engine._is_idle()
               and engine.scheduler.allocator.num_in_use == 0,
               "the engine idle, its pages back", timeout_s)
    assert outputs.empty(), f"an output after the end: {outputs.get()}"
    return collected


def tokens(outputs: list[RequestOutput]) -> list[int]:
    return [token for output in outputs for token in output.new_token_ids]


def text(outputs: list[RequestOutput]) -> str:
    return "".join(output.text_delta for output in outputs)


def both_ways(engine, monkeypatch, make_requests, **run_args):
    """The outputs of the same requests with async scheduling off, then on (fresh prefix-cache
    salts each time are not needed: cached pages hold the same KV)."""
    monkeypatch.setattr(engine, "async_scheduling", False)
    before = engine._async.num_continued
    off = run(engine, make_requests("off"), **run_args)
    assert engine._async.num_continued == before
    monkeypatch.setattr(engine, "async_scheduling", True)
    on = run(engine, make_requests("on"), **run_args)
    assert engine._async.num_continued > before  # steps really followed on device
    return off, on


def test_concurrent_requests_of_different_lengths_give_the_same_tokens(engine, monkeypatch):
    lengths = [3, 17, 40, 90, 5, 60, 33, 240]  # the last one ends at the context length
    max_tokens = [30, 7, 45, 20, 1, 38, 25, 50]

    def make(tag):
        return [request(f"{tag}-{i}", prompt, n) for i, (prompt, n)
                in enumerate(zip(prompts(0, lengths), max_tokens, strict=True))]

    off, on = both_ways(engine, monkeypatch, make)
    for i, n in enumerate(max_tokens):
        assert tokens(on[f"on-{i}"]) == tokens(off[f"off-{i}"])
        assert len(tokens(on[f"on-{i}"])) == min(n, 256 - lengths[i])
        assert on[f"on-{i}"][-1].finish_reason is FinishReason.LENGTH
        assert text(on[f"on-{i}"]) == text(off[f"off-{i}"])
        logprobs_on = [entry.logprob for out in on[f"on-{i}"] for entry in out.logprobs]
        logprobs_off = [entry.logprob for out in off[f"off-{i}"] for entry in out.logprobs]
        np.testing.assert_allclose(logprobs_on, logprobs_off, atol=1e-5)
    assert engine.compilations_after_warmup == 0


def test_stop_strings_stop_tokens_and_eos_end_at_the_same_token(engine, monkeypatch):
    """The stops fall in the middle of the pipelined decode steps: nothing sampled after them
    is emitted."""
    batch = prompts(1, [20, 35, 50, 8])
    free = run(engine, [request(f"free-{i}", p, 40) for i, p in enumerate(batch)])
    free_tokens = [tokens(free[f"free-{i}"]) for i in range(len(batch))]
    stop_string = text(free["free-0"])[-12:-6]  # somewhere in its last tokens' text
    assert stop_string.strip()
    stop_token = free_tokens[1][15]
    eos_token = free_tokens[2][22]
    # EOS of the model: the third request's 23rd token (the scheduler's copy masks min_tokens)
    monkeypatch.setattr(engine, "model_config", replace(engine.model_config,
                                                        eos_token_ids=(eos_token,)))

    def make(tag):
        return [request(f"{tag}-0", batch[0], 40, stop_strings=(stop_string,)),
                request(f"{tag}-1", batch[1], 40, stop_token_ids=(stop_token,)),
                request(f"{tag}-2", batch[2], 40, ignore_eos=False),
                request(f"{tag}-3", batch[3], 40)]

    off, on = both_ways(engine, monkeypatch, make)
    for i in range(len(batch)):
        assert tokens(on[f"on-{i}"]) == tokens(off[f"off-{i}"])
        assert text(on[f"on-{i}"]) == text(off[f"off-{i}"])
        assert on[f"on-{i}"][-1].finish_reason == off[f"off-{i}"][-1].finish_reason
    assert stop_string not in text(on["on-0"]) and on["on-0"][-1].stop_string == stop_string
    assert len(tokens(on["on-0"])) < 40
    assert tokens(on["on-1"]) == free_tokens[1][:free_tokens[1].index(stop_token) + 1]
    assert on["on-1"][-1].stop_token_id == stop_token
    assert tokens(on["on-2"]) == free_tokens[2][:free_tokens[2].index(eos_token) + 1]
    assert on["on-2"][-1].finish_reason is FinishReason.STOP
    assert tokens(on["on-3"]) == free_tokens[3]
    assert engine.compilations_after_warmup == 0


def test_an_abort_mid_stream_ends_one_request_and_not_the_others(engine, monkeypatch):
    batch = prompts(2, [10, 25, 40])

    def make(tag):
        # the aborted one may run far (200) so that a late abort is still seen to be an abort
        return [request(f"{tag}-{i}", p, 200 if i == 1 else 60) for i, p in enumerate(batch)]

    off, on = both_ways(engine, monkeypatch, make, abort_after={"off-1": 10, "on-1": 10})
    for outputs in (off["off-1"], on["on-1"]):
        assert outputs[-1].finish_reason is FinishReason.ABORT
        assert 10 <= len(tokens(outputs)) < 200
    # the aborted one's tokens are its synchronous ones as far as either went: where the abort
    # lands (a step sooner or later) depends on timing, so neither run need be the shorter
    on_aborted, off_aborted = tokens(on["on-1"]), tokens(off["off-1"])
    common = min(len(on_aborted), len(off_aborted))
    assert on_aborted[:common] == off_aborted[:common]
    for i in (0, 2):
        assert tokens(on[f"on-{i}"]) == tokens(off[f"off-{i}"])
        assert len(tokens(on[f"on-{i}"])) == 60
    assert engine.compilations_after_warmup == 0


def test_penalties_seeded_sampling_and_arrivals_mid_stream(engine, monkeypatch):
    """Device-side row state (penalty counts) and seeded sampling follow on device too; a
    request arriving while others decode falls back to a synchronous step and joins."""
    batch = prompts(3, [30, 14, 50, 22])
    penalized = SamplingParams(temperature=0.0, seed=2, repetition_penalty=1.3,
                               frequency_penalty=0.5)
    seeded = SamplingParams(temperature=0.9, top_p=0.9, seed=7)

    def make(tag):
        return [request(f"{tag}-0", batch[0], 40, sampling=penalized),
                request(f"{tag}-1", batch[1], 40, sampling=seeded),
                request(f"{tag}-2", batch[2], 40)]

    def late(tag):
        return request(f"{tag}-late", batch[3], 20)

    results = {}
    for tag, on in (("off", False), ("on", True)):
        monkeypatch.setattr(engine, "async_scheduling", on)
        outputs: queue.Queue[RequestOutput] = queue.Queue()
        for each in make(tag):
            engine.add_request(each, outputs.put)
        first = outputs.get(timeout=60)
        engine.add_request(late(tag), outputs.put)  # arrives while the others decode
        collected = {f"{tag}-{i}": [] for i in (0, 1, 2)} | {f"{tag}-late": []}
        collected[first.request_id].append(first)
        unfinished = {key for key in collected if not (
            key == first.request_id and first.finish_reason is not None)}
        while unfinished:
            output = outputs.get(timeout=60)
            assert output.error is None and output.request_id in unfinished
            collected[output.request_id].append(output)
            if output.finish_reason is not None:
                unfinished.discard(output.request_id)
        results[tag] = collected
    wait_until(lambda: engine.num_unfinished == 0 and engine.scheduler.allocator.num_in_use == 0,
               "the engine idle, its pages back", 60)
    for key in ("0", "1", "2", "late"):
        assert tokens(results["on"][f"on-{key}"]) == tokens(results["off"][f"off-{key}"]), key
    assert engine.compilations_after_warmup == 0


def test_the_option_reaches_the_engine(engine):
    from core import cli

    assert engine.engine_config.async_scheduling and engine.async_scheduling
    assert EngineConfig().async_scheduling is True  # on by default (measured: the bar)
    parser = cli.build_parser()
    for flags, expected in (([], True), (["--no-async-scheduling"], False),
                            (["--async-scheduling"], True)):
        args = parser.parse_args(["core", "--model", "/nonexistent", *flags])
        assert cli.engine_request(args).async_scheduling is expected
