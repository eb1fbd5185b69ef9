"""The priority policy in a real engine (the session's in-process core's tiny Llama, conftest
`grpc_core`, its compiled buckets reused): steps are let through one at a time, so every
scheduling decision is checked by step count and order of admission, never by a clock. Low-
priority requests fill the rows; a high-priority one that arrives then preempts the one still
prefilling, is admitted at once and samples in that same step; the preempted request resumes
and every request finishes with all its tokens. Each test empties the prefix cache first, so
that no prompt's prefill is shortened by an earlier test's."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from core.engine.request import FinishReason, Request, SamplingParams, StoppingParams
from tests.waiting import async_wait_until

LOW, HIGH = 10, 0


class _Collected:
    """One request's outputs and the step (count of dispatches) of each."""

    def __init__(self, steps: list) -> None:
        self.steps = steps
        self.tokens: list[int] = []
        self.token_steps: list[int] = []
        self.finish_reason = None
        self.error = None
        self.done = threading.Event()

    def __call__(self, output) -> None:  # the engine thread
        self.tokens.extend(output.new_token_ids)
        self.token_steps.extend([len(self.steps)] * len(output.new_token_ids))
        self.error = self.error or output.error
        if output.finish_reason is not None:
            self.finish_reason = output.finish_reason
            self.done.set()


def _request(request_id: str, first_id: int, num_prompt: int, priority: int,
             max_tokens: int) -> Request:
    return Request(request_id, list(range(first_id, first_id + num_prompt)),
                   SamplingParams(temperature=0.0),
                   StoppingParams(max_tokens=max_tokens, ignore_eos=True), priority=priority)


async def test_a_high_priority_request_preempts_a_prefilling_low_one_and_nothing_is_lost(
        grpc_core, monkeypatch):
    engine = grpc_core.server.servicer.engine
    scheduler = engine.scheduler
    await async_wait_until(lambda: engine.num_unfinished == 0, "the engine idle")
    await asyncio.wrap_future(engine.clear_prefix_cache())  # no prompt served from the cache
    # 2 rows and a 32-token step: a 50-token prompt prefills over 2 steps (shapes compiled)
    monkeypatch.setattr(scheduler, "config", replace(
        scheduler.config, max_num_seqs=2, max_num_batched_tokens=32,
        scheduling_policy="priority"))
    monkeypatch.setattr(scheduler, "by_priority", True)
    steps: list[int] = []
    gate, free = threading.Semaphore(0), threading.Event()
    dispatch, reserve = engine.runner.dispatch, scheduler._reserve_admission
    admitted: list[str] = []

    def stepped_dispatch(batch):
        steps.append(len(batch.chunks))
        if not free.is_set():
            gate.acquire(timeout=120)
        return dispatch(batch)

    def recorded_reserve(request, budget):
        num_new = reserve(request, budget)
        if num_new is not None:
            admitted.append(request.request_id)
        return num_new

    monkeypatch.setattr(engine.runner, "dispatch", stepped_dispatch)
    monkeypatch.setattr(scheduler, "_reserve_admission", recorded_reserve)
    outputs: dict[str, _Collected] = {}

    def add(request: Request) -> None:
        outputs[request.request_id] = _Collected(steps)
        engine.add_request(request, outputs[request.request_id])

    try:
        add(_request("P", 5, 5, LOW, max_tokens=12))  # plugs step 1
        await async_wait_until(lambda: len(steps) == 1, "step 1 dispatched")
        for index in (1, 2, 3):  # taken together at the start of step 2
            add(_request(f"L{index}", 100 * index, 50, LOW, max_tokens=4))
        gate.release()
        await async_wait_until(lambda: len(steps) == 2, "step 2 dispatched")
        # step 2: P decodes, L1 takes the second row and the rest of the budget
        assert admitted == ["P", "L1"]
        assert [r.request_id for r in scheduler.running] == ["P", "L1"]
        add(_request("H", 7, 5, HIGH, max_tokens=4))
        gate.release()
        await async_wait_until(lambda: len(steps) == 3, "step 3 dispatched")
        # step 3: H preempted L1 (31 of its 50 prompt tokens computed, no token sampled yet)
        assert admitted == ["P", "L1", "H"]
        assert [r.request_id for r in scheduler.running] == ["P", "H"]
        assert [r.request_id for r in scheduler.waiting] == ["L1", "L2", "L3"]
        assert engine.stats().num_preemptions >= 1
    finally:
        free.set()
        for _ in range(4):
            gate.release()
    await async_wait_until(lambda: all(o.done.is_set() for o in outputs.values()),
                           "every request finished")
    assert outputs["H"].token_steps[0] == 3  # its first token: the step it was admitted in
    assert admitted == ["P", "L1", "H", "L1", "L2", "L3"]  # L1 resumed before L2, L3
    for request_id, collected in outputs.items():  # nothing lost, every token there
        assert collected.error is None, request_id
        assert collected.finish_reason == FinishReason.LENGTH, request_id
        assert len(collected.tokens) == (12 if request_id == "P" else 4), request_id
    await async_wait_until(lambda: engine.num_unfinished == 0, "the engine idle")
    assert scheduler.allocator.num_in_use == 0  # every page came back


async def test_under_a_flood_of_low_priority_requests_high_ones_go_first_and_none_is_lost(
        grpc_core, monkeypatch):
    """Ten low-priority requests queue behind a running one; three high-priority ones arrive
    while step 2 is held. From then on the next three admissions are the high ones, in
    (priority, arrival) order, before any waiting low one; the first samples in the very next
    step (it preempts the low request still prefilling). Every request finishes with all its
    tokens, the preempted ones included."""
    engine = grpc_core.server.servicer.engine
    scheduler = engine.scheduler
    await async_wait_until(lambda: engine.num_unfinished == 0, "the engine idle")
    await asyncio.wrap_future(engine.clear_prefix_cache())  # no prompt served from the cache
    monkeypatch.setattr(scheduler, "config", replace(
        scheduler.config, max_num_seqs=2, max_num_batched_tokens=32,
        scheduling_policy="priority"))
    monkeypatch.setattr(scheduler, "by_priority", True)
    steps: list[int] = []
    gate, free = threading.Semaphore(0), threading.Event()
    dispatch, reserve, preempt = (engine.runner.dispatch, scheduler._reserve_admission,
                                  scheduler._preempt)
    admitted: list[str] = []
    preempted: list[str] = []

    def stepped_dispatch(batch):
        steps.append(len(batch.chunks))
        if not free.is_set():
            gate.acquire(timeout=120)
        return dispatch(batch)

    def recorded_reserve(request, budget):
        num_new = reserve(request, budget)
        if num_new is not None:
            admitted.append(request.request_id)
        return num_new

    def recorded_preempt(request):
        preempted.append(request.request_id)
        preempt(request)

    monkeypatch.setattr(engine.runner, "dispatch", stepped_dispatch)
    monkeypatch.setattr(scheduler, "_reserve_admission", recorded_reserve)
    monkeypatch.setattr(scheduler, "_preempt", recorded_preempt)
    outputs: dict[str, _Collected] = {}

    def add(request: Request) -> None:
        outputs[request.request_id] = _Collected(steps)
        engine.add_request(request, outputs[request.request_id])

    highs = (("H0a", HIGH), ("H0b", HIGH), ("H1", HIGH + 1))
    try:
        add(_request("P", 5, 5, LOW, max_tokens=20))
        await async_wait_until(lambda: len(steps) == 1, "step 1 dispatched")
        for index in range(10):
            add(_request(f"L{index}", 200 + 50 * index, 40, LOW, max_tokens=3))
        gate.release()
        await async_wait_until(lambda: len(steps) == 2, "step 2 dispatched")
        arrival_step, num_admitted_before = len(steps), len(admitted)
        for index, (request_id, priority) in enumerate(highs):
            add(_request(request_id, 20 + 10 * index, 5, priority, max_tokens=3))
    finally:
        free.set()
        for _ in range(4):
            gate.release()
    await async_wait_until(lambda: all(o.done.is_set() for o in outputs.values()),
                           "every request finished")
    after = admitted[num_admitted_before:]
    assert after[:3] == ["H0a", "H0b", "H1"], admitted
    assert outputs["H0a"].token_steps[0] == arrival_step + 1, outputs["H0a"].token_steps
    assert preempted and not set(preempted) & {"P", "H0a", "H0b", "H1"}
    assert set(after[3:]) == {f"L{index}" for index in range(10)} - set(admitted[:2]) | set(
        preempted)  # every low one still waiting was admitted afterwards
    for request_id, collected in outputs.items():  # nothing lost, every token there
        assert collected.error is None, request_id
        assert collected.finish_reason == FinishReason.LENGTH, request_id
        assert len(collected.tokens) == (20 if request_id == "P" else 3), request_id
    await async_wait_until(lambda: engine.num_unfinished == 0, "the engine idle")
    assert scheduler.allocator.num_in_use == 0
