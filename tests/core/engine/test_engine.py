"""The batching engine on a real tiny model: batching, prefix cache, preemption, cancellation,
static shapes. Every comparison is between token ids the real model produced."""

from __future__ import annotations

import queue
import time

import numpy as np
import pytest

from core.config import EngineConfig
from core.engine.request import Request, RequestOutput, SamplingParams, StoppingParams
from tests.waiting import wait_until

GREEDY = SamplingParams(temperature=0.0, seed=1)


@pytest.fixture(scope="module")
def engine(tiny_models):
    from core.engine.startup import create_engine

    # a 256-token step budget: 24 prefill shapes to compile instead of 30 (long prompts chunk)
    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=2048, max_num_seqs=32, min_decode_pages=32, max_num_batched_tokens=256))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def small_pool_engine(tiny_models):
    """A pool of 20 pages (320 tokens) for sequences of up to 256 tokens: preemption."""
    from core.engine.startup import create_engine

    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=256, max_num_seqs=8, num_pages=20, max_num_batched_tokens=64))
    yield engine
    engine.stop()


def make_request(request_id: str, prompt: list[int], max_tokens: int = 8, salt: str = "",
                 sampling: SamplingParams = GREEDY, top_logprobs: int = 0) -> Request:
    return Request(request_id, list(prompt), sampling,
                   StoppingParams(max_tokens=max_tokens, ignore_eos=True), cache_salt=salt,
                   want_logprobs=top_logprobs > 0, top_logprobs=top_logprobs)


def run(engine, requests: list[Request], timeout_s: float = 120) -> dict[str, list[RequestOutput]]:
    """Add all requests at once; collect every output until each has finished."""
    outputs: queue.Queue[RequestOutput] = queue.Queue()
    for request in requests:
        engine.add_request(request, outputs.put)
    collected: dict[str, list[RequestOutput]] = {r.request_id: [] for r in requests}
    unfinished = set(collected)
    deadline = time.monotonic() + timeout_s
    while unfinished:
        output = outputs.get(timeout=max(0.1, deadline - time.monotonic()))
        assert output.error is None, output.error
        collected[output.request_id].append(output)
        if output.finish_reason is not None:
            unfinished.discard(output.request_id)
    return collected


def tokens(outputs: list[RequestOutput]) -> list[int]:
    return [token for output in outputs for token in output.new_token_ids]


def wait_for_idle(engine, timeout_s: float = 120.0) -> None:
    """Until no request is unfinished and every KV page is back (fails after `timeout_s`)."""
    wait_until(lambda: engine.num_unfinished == 0
               and engine.scheduler.allocator.num_in_use == 0, "the engine idle, its pages back",
               timeout_s)


def random_prompt(rng: np.random.Generator, length: int) -> list[int]:
    return rng.integers(5, 500, size=length).tolist()


def test_32_concurrent_greedy_requests_match_each_alone(engine, monkeypatch):
    rng = np.random.default_rng(0)
    lengths = np.linspace(1, 1500, 32).astype(int).tolist()
    prompts = [random_prompt(rng, n) for n in lengths]
    rows_per_step = []
    dispatch = engine.runner.dispatch
    monkeypatch.setattr(engine.runner, "dispatch",
                        lambda batch: rows_per_step.append(len(batch.chunks)) or dispatch(batch))
    together = run(engine, [make_request(f"batch-{i}", p, max_tokens=16)
                            for i, p in enumerate(prompts)])
    monkeypatch.undo()
    assert max(rows_per_step) >= 12  # they really shared steps
    for i, prompt in enumerate(prompts):  # a fresh salt: each alone run is cold
        alone = run(engine, [make_request(f"alone-{i}", prompt, max_tokens=16,
                                          salt=f"alone-{i}")])
        assert tokens(alone[f"alone-{i}"]) == tokens(together[f"batch-{i}"]), lengths[i]
        assert len(tokens(alone[f"alone-{i}"])) == 16


def test_prefix_cache_hit_gives_the_cold_tokens_and_logprobs(engine):
    prompt = random_prompt(np.random.default_rng(1), 100)
    cold = run(engine, [make_request("cold", prompt, max_tokens=12, salt="p", top_logprobs=5)])
    warm = run(engine, [make_request("warm", prompt, max_tokens=12, salt="p", top_logprobs=5)])
    assert cold["cold"][0].cached_tokens == 0
    assert warm["warm"][0].cached_tokens == 96  # whole pages of the first 99 tokens
    assert tokens(warm["warm"]) == tokens(cold["cold"])
    cold_lp = [lp for out in cold["cold"] for lp in out.logprobs]
    warm_lp = [lp for out in warm["warm"] for lp in out.logprobs]
    for a, b in zip(cold_lp, warm_lp, strict=True):
        assert [t for t, _ in a.top] == [t for t, _ in b.top]
        np.testing.assert_allclose([v for _, v in a.top], [v for _, v in b.top], atol=1e-4)
    other_salt = run(engine, [make_request("other", prompt, salt="q")])
    assert other_salt["other"][0].cached_tokens == 0


def test_a_second_turn_reuses_the_first_turns_pages(engine):
    first_prompt = random_prompt(np.random.default_rng(2), 70)
    first = run(engine, [make_request("turn-1", first_prompt, max_tokens=20, salt="chat")])
    second_prompt = first_prompt + tokens(first["turn-1"]) + random_prompt(
        np.random.default_rng(3), 15)
    second = run(engine, [make_request("turn-2", second_prompt, salt="chat")])
    assert second["turn-2"][0].cached_tokens >= 80  # the prompt and most of the reply


def test_preemption_completes_every_request_with_the_right_tokens(small_pool_engine):
    engine = small_pool_engine
    rng = np.random.default_rng(4)
    prompts = [random_prompt(rng, int(n)) for n in rng.integers(40, 120, size=8)]
    before = engine.scheduler.num_preemptions
    together = run(engine, [make_request(f"p-{i}", p, max_tokens=60, salt="pool")
                            for i, p in enumerate(prompts)])
    assert engine.scheduler.num_preemptions > before
    for i, prompt in enumerate(prompts):
        alone = run(engine, [make_request(f"pa-{i}", prompt, max_tokens=60, salt=f"pa-{i}")])
        assert tokens(alone[f"pa-{i}"]) == tokens(together[f"p-{i}"])
    wait_for_idle(engine)
    assert engine.scheduler.allocator.num_in_use == 0


def test_cancel_frees_pages_within_one_step(engine, monkeypatch):
    steps_after_abort: list[int] = []
    aborted = False
    dispatch = engine.runner.dispatch

    def counting(batch):
        if aborted:
            steps_after_abort.append(len(batch.chunks))
        return dispatch(batch)

    monkeypatch.setattr(engine.runner, "dispatch", counting)
    outputs: queue.Queue[RequestOutput] = queue.Queue()
    prompt = random_prompt(np.random.default_rng(5), 300)
    engine.add_request(make_request("long", prompt, max_tokens=1000), outputs.put)
    outputs.get(timeout=60)  # running, pages held
    assert engine.scheduler.allocator.num_in_use >= 19
    aborted = True
    engine.abort("long")
    wait_for_idle(engine)
    assert engine.num_unfinished == 0 and engine.scheduler.allocator.num_in_use == 0
    assert len(steps_after_abort) <= 1


def test_mixed_workload_after_warmup_compiles_nothing_and_returns_every_page(engine):
    rng = np.random.default_rng(6)
    shared = random_prompt(rng, 64)
    requests = []
    for i in range(24):
        prompt = (shared if i % 3 == 0 else []) + random_prompt(rng, int(rng.integers(1, 700)))
        sampling = (GREEDY if i % 2 else SamplingParams(temperature=0.8, top_p=0.9, top_k=40,
                                                        min_p=0.05, seed=i))
        requests.append(make_request(f"mix-{i}", prompt, max_tokens=int(rng.integers(1, 40)),
                                     sampling=sampling, top_logprobs=int(i % 4 == 0) * 3))
    outputs: queue.Queue[RequestOutput] = queue.Queue()
    for request in requests:
        engine.add_request(request, outputs.put)
    cancelled = {f"mix-{i}" for i in range(1, 24, 5)}
    for request_id in cancelled:
        engine.abort(request_id)
    wait_for_idle(engine)
    assert engine.num_unfinished == 0
    assert engine.scheduler.allocator.num_in_use == 0
    assert engine.compilations_after_warmup == 0
