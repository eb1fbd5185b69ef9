"""The page allocator, radix prefix cache and scheduler as plain Python (no model, no JAX)."""

from __future__ import annotations

import pytest

from core.cache.pages import PageAllocator
from core.cache.radix import RadixCache
from core.config import ConfigError, EngineConfig
from core.engine.request import Request, SamplingParams, SchedulerOutput, StoppingParams
from core.engine.scheduler import Scheduler

PAGE = 4


def make_request(request_id: str, num_prompt_tokens: int, first_token: int = 10,
                 salt: str = "") -> Request:
    prompt = list(range(first_token, first_token + num_prompt_tokens))
    return Request(request_id, prompt, SamplingParams(temperature=0.0),
                   StoppingParams(max_tokens=100), cache_salt=salt)


def test_allocator_frees_a_page_when_no_request_and_no_cache_holds_it():
    allocator = PageAllocator(4)
    pages = allocator.allocate(3)
    assert allocator.num_free == 1 and allocator.num_in_use == 3
    assert allocator.allocate(2) is None
    allocator.acquire(pages[:1])
    allocator.release(pages)
    assert allocator.num_free == 3 and allocator.num_in_use == 1
    allocator.set_cached(pages[0], True)
    allocator.release(pages[:1])
    assert allocator.num_free == 3 and allocator.is_evictable(pages[0])
    allocator.set_cached(pages[0], False)
    assert allocator.num_free == 4 and allocator.num_in_use == 0
    with pytest.raises(ValueError):
        allocator.release(pages[:1])


def test_radix_matches_whole_blocks_within_a_salt():
    allocator = PageAllocator(8)
    cache = RadixCache(allocator, PAGE)
    tokens = list(range(10))  # two whole blocks and a partial one
    pages = allocator.allocate(3)
    cache.insert(tokens, pages)
    assert cache.num_pages == 2
    assert cache.match(tokens) == pages[:2]
    assert cache.match(tokens, max_tokens=7) == pages[:1]
    assert cache.match([0, 1, 2, 3, 99, 5, 6, 7]) == pages[:1]
    assert cache.match(tokens, salt="other") == []
    cache.record_lookup(10, 8)
    assert (cache.stats.queried_tokens, cache.stats.hit_tokens) == (10, 8)


def test_radix_evicts_least_recently_used_unheld_leaves_first():
    allocator = PageAllocator(6)
    cache = RadixCache(allocator, PAGE)
    first, second = allocator.allocate(2), allocator.allocate(2)
    cache.insert([1] * 8, first)
    cache.insert([2] * 8, second)
    allocator.release(first + second)  # only the cache holds them now
    assert allocator.num_free == 2
    cache.match([1] * 8)  # the first prefix is now the most recent
    assert cache.evict(2) == 2
    assert cache.match([2] * 8) == [] and cache.match([1] * 8) == first
    held = cache.match([1] * 8)
    allocator.acquire(held)  # a request holds them: not evictable
    assert cache.evict(2) == 0
    allocator.release(held)
    assert cache.evict(5) == 2 and allocator.num_free == 6


def test_disabled_prefix_cache_never_matches():
    allocator = PageAllocator(4)
    cache = RadixCache(allocator, PAGE, enabled=False)
    pages = allocator.allocate(2)
    cache.insert(list(range(8)), pages)
    assert cache.match(list(range(8))) == [] and cache.num_pages == 0


def config(**overrides) -> EngineConfig:
    values = dict(max_model_len=64, max_num_seqs=4, max_num_batched_tokens=16, page_size=PAGE,
                  min_prefill_bucket=4, num_pages=64)
    return EngineConfig(**{**values, **overrides})


def step(scheduler: Scheduler, sampled_token: int = 7):
    """Schedule, pretend the model ran, append a token to every sequence that sampled."""
    output = scheduler.schedule()
    assert output is not None and output.num_tokens <= scheduler.config.max_num_batched_tokens
    scheduler.update_after_step(output)
    for chunk in output.chunks:
        if chunk.wants_sample:
            next(r for r in scheduler.running if r.request_id == chunk.request_id) \
                .output_token_ids.append(sampled_token)
    return output


def test_chunked_prefill_under_the_token_budget_then_decodes_first():
    scheduler = Scheduler(config(), 64)
    long, short = make_request("long", 40), make_request("short", 3, first_token=100)
    scheduler.add(long)
    scheduler.add(short)
    first = step(scheduler)
    assert [(c.request_id, len(c.token_ids)) for c in first.chunks] == [("long", 16)]
    assert not first.chunks[0].wants_sample
    step(scheduler)
    third = step(scheduler)  # long's last 8 tokens, then short's whole prompt
    assert [(c.request_id, len(c.token_ids)) for c in third.chunks] == [("long", 8), ("short", 3)]
    fourth = step(scheduler)  # both decode: one token each
    assert [(c.request_id, len(c.token_ids)) for c in fourth.chunks] == [("long", 1), ("short", 1)]
    assert fourth.chunks[0].start_position == 40 and len(fourth.chunks[0].page_ids) == 11


def test_max_num_seqs_bounds_running():
    scheduler = Scheduler(config(max_num_seqs=2, max_num_batched_tokens=64), 64)
    for index in range(4):
        scheduler.add(make_request(f"r{index}", 2, first_token=10 * index))
    step(scheduler)
    assert len(scheduler.running) == 2 and len(scheduler.waiting) == 2


def test_preemption_recomputes_and_releases_everything():
    scheduler = Scheduler(config(max_num_batched_tokens=64, num_pages=16), 16)
    requests = [make_request(f"r{i}", 14, first_token=20 * i) for i in range(4)]
    for request in requests:
        scheduler.add(request)
    for _ in range(40):
        step(scheduler)
    assert scheduler.num_preemptions > 0
    assert all(len(r.output_token_ids) > 0 for r in requests)
    for request in requests:
        scheduler.finish(request)
    assert scheduler.allocator.num_in_use == 0
    assert scheduler.allocator.num_free + scheduler.prefix_cache.num_pages == 16


def test_a_cached_prefix_is_matched_at_admission_but_the_last_token_is_computed():
    scheduler = Scheduler(config(), 64)
    first = make_request("first", 9)
    scheduler.add(first)
    step(scheduler)
    scheduler.finish(first)
    again = make_request("again", 9)
    scheduler.add(again)
    output = step(scheduler)
    assert again.num_cached_tokens == 8
    assert [(c.start_position, len(c.token_ids)) for c in output.chunks] == [(8, 1)]
    salted = make_request("salted", 9, salt="tenant-b")
    scheduler.add(salted)
    step(scheduler)
    assert salted.num_cached_tokens == 0


def test_config_rejects_a_pool_smaller_than_one_sequence():
    with pytest.raises(ConfigError):
        config(num_pages=3).resolved_num_pages(kv_bytes_per_token=1)


def test_evicting_a_salt_s_last_page_drops_its_root():
    allocator = PageAllocator(8)
    cache = RadixCache(allocator, PAGE)
    for index in range(4):  # e.g. one salt per user
        pages = allocator.allocate(1)
        cache.insert([index] * PAGE, pages, salt=f"user-{index}")
        allocator.release(pages)
    assert len(cache._roots) == 4
    assert cache.evict(8) == 4 and cache._roots == {}


@pytest.mark.parametrize("field", ["max_num_seqs", "min_prefill_bucket", "min_decode_pages",
                                   "page_size", "max_num_batched_tokens"])
def test_config_rejects_non_positive_limits(field):
    with pytest.raises(ConfigError, match=field):
        config(**{field: 0})


def test_the_scheduler_does_not_import_jax():
    import subprocess
    import sys

    code = "import sys, core.engine.scheduler, core.engine.loop; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _run_to_the_end(scheduler: Scheduler, max_tokens: int) -> list[str]:
    """Steps until every request has `max_tokens` tokens; returns the order of finishing."""
    finished = []
    for _ in range(200):
        if not scheduler.num_unfinished:
            return finished
        step(scheduler)
        for request in list(scheduler.running):
            if len(request.output_token_ids) >= max_tokens:
                scheduler.finish(request)
                finished.append(request.request_id)
    raise AssertionError("requests left after 200 steps")


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_a_better_priority_preempts_a_request_that_has_not_sampled_yet(policy):
    """Two rows: L1 has sampled (decoding), L2 is admitted and prefilling when H (priority 0)
    arrives. Under "priority" the step preempts L2 (it has sampled nothing; its pages go back)
    and admits H at once; L2 resumes and finishes. Under "fcfs" H waits for a row."""
    scheduler = Scheduler(config(max_num_seqs=2, scheduling_policy=policy), 64)
    low = [make_request(f"L{i}", 30, first_token=100 * i) for i in (1, 2)]
    for request in low:
        request.priority = 5
        scheduler.add(request)
    step(scheduler)  # L1: 16 of 30 prompt tokens
    step(scheduler)  # L1: the last 14, samples; L2 admitted with 2 tokens
    assert [r.request_id for r in scheduler.running] == ["L1", "L2"]
    assert low[0].output_token_ids and not low[1].output_token_ids
    high = make_request("H", 8, first_token=900)
    scheduler.add(high)
    output = step(scheduler)
    scheduled = {chunk.request_id for chunk in output.chunks}
    if policy == "priority":
        assert scheduled == {"L1", "H"} and low[1].num_preemptions == 1
        assert [r.request_id for r in scheduler.waiting] == ["L2"]
        assert low[1].page_ids == [] and low[1].num_computed_tokens == 0
    else:
        assert scheduled == {"L1", "L2"} and low[1].num_preemptions == 0
        assert [r.request_id for r in scheduler.waiting] == ["H"]
    finished = _run_to_the_end(scheduler, max_tokens=3)
    assert sorted(finished) == ["H", "L1", "L2"]  # nothing lost
    assert scheduler.allocator.num_in_use == 0


def test_priority_orders_the_queue_and_never_preempts_a_request_that_sampled():
    """The queue is (priority, arrival) order; a running request that has sampled a token
    keeps its row even when a better one waits."""
    scheduler = Scheduler(config(max_num_seqs=1, scheduling_policy="priority"), 64)
    first = make_request("first", 4)
    first.priority = 9
    scheduler.add(first)
    step(scheduler)  # admitted, prefilled, sampled
    for request_id, priority in (("p3", 3), ("p1a", 1), ("p7", 7), ("p1b", 1)):
        request = make_request(request_id, 4, first_token=50)
        request.priority = priority
        scheduler.add(request)
    step(scheduler)
    assert [r.request_id for r in scheduler.running] == ["first"]
    assert [r.request_id for r in scheduler.waiting] == ["p1a", "p1b", "p3", "p7"]
    assert _run_to_the_end(scheduler, max_tokens=2) == ["first", "p1a", "p1b", "p3", "p7"]



def test_continued_decodes_go_one_position_on_and_never_preempt():
    """Async scheduling's next chunks, built while the step before is in flight (its KV counted,
    its token not appended yet): one position on, pages from the free list; None, with nothing
    preempted, when the pool runs short."""
    scheduler = Scheduler(config(max_num_batched_tokens=64, num_pages=8), 8)
    requests = [make_request(f"r{i}", 12, first_token=20 * i) for i in range(2)]
    for request in requests:
        scheduler.add(request)
    step(scheduler)  # the prompts (3 pages each) and a first token
    in_flight = scheduler.schedule()  # decodes at position 12: a fourth page each, pool full
    assert [chunk.start_position for chunk in in_flight.chunks] == [12, 12]
    assert scheduler.allocator.num_free == 0
    for position in (13, 14, 15):
        scheduler.update_after_step(in_flight)
        chunks = scheduler.continue_decodes(requests)
        assert [(c.request_id, c.start_position, c.token_ids, c.wants_sample, len(c.page_ids))
                for c in chunks] == [(r.request_id, position, (0,), True, 4) for r in requests]
        for request in requests:  # the token in flight reaches the host
            request.output_token_ids.append(7)
        in_flight = SchedulerOutput(tuple(chunks))
    scheduler.update_after_step(in_flight)
    assert scheduler.continue_decodes(requests) is None  # position 16: a fifth page each
    assert scheduler.num_preemptions == 0 and scheduler.running == requests
