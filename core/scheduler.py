"""Which tokens of which sequences the next engine step computes (pure Python, no JAX).

Owns: the waiting queue and the running list, the page allocator and the radix prefix cache.
Each step spends a token budget: first one token for every decoding sequence, then the next
chunk of each sequence still prefilling, then new admissions (after a prefix-cache lookup).
Pages come from the free list, then from evicting unheld cached prefixes; when none are left a
later-admitted sequence is preempted — its pages are released and it goes back to the front of
the queue to recompute them (its generated tokens are kept), so nothing is dropped or corrupted.
The scheduler itself refuses nothing: the engine admits at most `EngineConfig.max_unfinished`
requests (`max_num_seqs` + `max_waiting`, running and queued together) and answers OVERLOADED
beyond that, before a request reaches this queue.
"""

from __future__ import annotations

import logging
from collections import deque

from core.cache.pages import PageAllocator
from core.cache.radix import RadixCache
from core.config import EngineConfig
from core.request import Request, SchedulerOutput, SequenceChunk

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: EngineConfig, num_pages: int):
        self.config = config
        self.page_size = config.page_size
        self.allocator = PageAllocator(num_pages)
        self.prefix_cache = RadixCache(self.allocator, config.page_size,
                                       enabled=config.enable_prefix_cache)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.num_preemptions = 0
        self._max_chunk_tokens = config.prefill_buckets()[-1]

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of pages that running requests hold (idle cached prefixes count as free)."""
        return self.allocator.num_in_use / self.allocator.num_pages

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def finish(self, request: Request) -> None:
        """Remove a finished or aborted request and release its pages."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._release_pages(request)

    # -- one step --------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput | None:
        budget = self.config.max_num_batched_tokens
        chunks: list[SequenceChunk] = []
        scheduled: set[str] = set()
        preempted = False
        decoding_first = sorted(self.running,
                                key=lambda r: r.num_tokens - r.num_computed_tokens > 1)
        for request in decoding_first:
            if budget == 0:
                break
            if request not in self.running:
                continue  # preempted earlier in this step
            num_new = min(request.num_tokens - request.num_computed_tokens, budget,
                          self._max_chunk_tokens)
            fits, preempted_any = self._reserve_running(request, num_new, scheduled)
            preempted |= preempted_any
            if fits:
                chunks.append(self._chunk(request, num_new))
                scheduled.add(request.request_id)
                budget -= num_new
        if not preempted:
            budget = self._admit(budget, chunks)
        if not chunks:
            return None
        running = self._running_by_id()
        wants_logprobs = any(
            chunk.wants_sample and running[chunk.request_id].want_logprobs for chunk in chunks)
        return SchedulerOutput(chunks=tuple(chunks), wants_logprobs=wants_logprobs)

    def update_after_step(self, output: SchedulerOutput) -> None:
        """The chunks' KV is computed: advance each sequence and cache its whole blocks."""
        running = self._running_by_id()
        for chunk in output.chunks:
            request = running[chunk.request_id]
            before = request.num_computed_tokens // self.page_size
            request.num_computed_tokens += len(chunk.token_ids)
            full_blocks = request.num_computed_tokens // self.page_size
            if full_blocks > before:
                self.prefix_cache.insert(request.all_token_ids[:full_blocks * self.page_size],
                                         request.page_ids[:full_blocks], request.cache_salt)

    # -- helpers ---------------------------------------------------------------------------

    def _running_by_id(self) -> dict[str, Request]:
        return {request.request_id: request for request in self.running}

    def _chunk(self, request: Request, num_new: int) -> SequenceChunk:
        start = request.num_computed_tokens
        end = start + num_new
        tokens = request.all_token_ids[start:end]
        return SequenceChunk(
            request_id=request.request_id, token_ids=tuple(tokens), start_position=start,
            page_ids=tuple(request.page_ids[:-(-end // self.page_size)]),
            sampling=request.sampling, wants_sample=end == request.num_tokens,
            wants_scores=end == request.num_tokens and bool(request.score_label_ids))

    def _pages_missing(self, request: Request, num_new: int) -> int:
        needed = -(-(request.num_computed_tokens + num_new) // self.page_size)
        return max(0, needed - len(request.page_ids))

    def _allocate(self, count: int) -> list[int] | None:
        """Fresh pages, evicting idle cached prefixes when the free list is short."""
        if count > self.allocator.num_free:
            self.prefix_cache.evict(count - self.allocator.num_free)
        return self.allocator.allocate(count)

    def _reserve_running(self, request: Request, num_new: int,
                         scheduled: set[str]) -> tuple[bool, bool]:
        """Pages for a running request's next tokens, preempting later-admitted requests not yet
        scheduled in this step (or, as a last resort, the request itself).
        Returns (request fits, something was preempted)."""
        preempted = False
        missing = self._pages_missing(request, num_new)
        while missing:
            page_ids = self._allocate(missing)
            if page_ids is not None:
                request.page_ids.extend(page_ids)
                break
            victims = [r for r in self.running
                       if r.request_id not in scheduled and r is not request]
            victim = victims[-1] if victims else request
            self._preempt(victim)
            preempted = True
            if victim is request:
                return False, True
        return True, preempted

    def _preempt(self, request: Request) -> None:
        log.info("preempting %s: KV pool exhausted (%d tokens to recompute)",
                 request.request_id, request.num_computed_tokens)
        self.running.remove(request)
        self._release_pages(request)
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _release_pages(self, request: Request) -> None:
        self.allocator.release(request.page_ids)
        request.page_ids = []
        request.num_computed_tokens = 0

    def _admit(self, budget: int, chunks: list[SequenceChunk]) -> int:
        """Admit waiting requests while rows, budget and pages allow; returns the budget left."""
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            tokens = request.all_token_ids
            cached_pages = self.prefix_cache.match(tokens, request.cache_salt,
                                                   max_tokens=len(tokens) - 1)
            self.allocator.acquire(cached_pages)
            request.page_ids = list(cached_pages)
            request.num_computed_tokens = len(cached_pages) * self.page_size
            num_new = min(len(tokens) - request.num_computed_tokens, budget,
                          self._max_chunk_tokens)
            page_ids = self._allocate(self._pages_missing(request, num_new))
            if page_ids is None:  # the pool is full of running work: wait for a later step
                self._release_pages(request)
                break
            request.page_ids.extend(page_ids)
            if not request.admitted:
                request.admitted = True
                request.num_cached_tokens = request.num_computed_tokens
                self.prefix_cache.record_lookup(len(tokens), request.num_computed_tokens)
            self.waiting.popleft()
            self.running.append(request)
            chunks.append(self._chunk(request, num_new))
            budget -= num_new
        return budget
