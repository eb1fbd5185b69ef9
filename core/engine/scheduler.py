"""Which tokens of which sequences the next engine step computes (pure Python, no JAX).

Owns: the waiting queue and the running list, the page allocator and the radix prefix cache.
Each step spends a token budget: first one token for every decoding sequence, then the next
chunk of each sequence still prefilling, then new admissions (after a prefix-cache lookup).
Pages come from the free list, then from evicting unheld cached prefixes; when none are left a
later-admitted sequence is preempted — its pages are released and it goes back to the front of
the queue to recompute them (its generated tokens are kept), so nothing is dropped or corrupted.
Under `scheduling_policy="priority"` the queue is kept in (priority, arrival) order — lower
`Request.priority` first, as vLLM — and a waiting request that finds no row or no pages free
preempts running requests of a worse priority that have not sampled their first token (latest
first; their pages are freed and they are re-queued in order, so they resume). Those
requests' prefill chunks also yield the step's token budget to its admission. Under "fcfs"
(the default) the queue is arrival order and nothing is preempted for priority.
The scheduler itself refuses nothing: the engine admits at most `EngineConfig.max_unfinished`
requests (`max_num_seqs` + `max_waiting`, running and queued together) and answers OVERLOADED
beyond that, before a request reaches this queue.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque

from core.cache.pages import PageAllocator
from core.cache.radix import RadixCache
from core.config import EngineConfig
from core.engine import speculative
from core.engine.request import (
    MAX_BANNED_IDS,
    MAX_MIN_TOKENS_IDS,
    Request,
    SchedulerOutput,
    SequenceChunk,
)

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: EngineConfig, num_pages: int, eos_token_ids: tuple[int, ...] = ()):
        self.config = config
        self.eos_token_ids = eos_token_ids  # masked under min_tokens (unless ignore_eos)
        self._free_row_slots = list(range(config.max_num_seqs))  # logits state rows
        self.page_size = config.page_size
        self.allocator = PageAllocator(num_pages)
        self.prefix_cache = RadixCache(self.allocator, config.page_size,
                                       enabled=config.enable_prefix_cache)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.num_preemptions = 0
        self.by_priority = config.scheduling_policy == "priority"
        self._num_added = 0  # arrival counter (Request.arrival_seq)
        self._max_chunk_tokens = config.prefill_buckets()[-1]
        # n-gram speculation: drafts per sequence at most, and sequences verified per step at
        # most (the runner's verify calls; 0: no speculation)
        self.max_drafts = config.speculative_ngram
        self.max_verify_rows = config.verify_buckets()[-1] if config.speculative_ngram else 0

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    @property
    def kv_cache_usage(self) -> float:
        """Fraction of pages that running requests hold (idle cached prefixes count as free)."""
        return self.allocator.num_in_use / self.allocator.num_pages

    def waiting_uncached_tokens(self) -> int:
        """Tokens the waiting requests would still compute if admitted now: theirs minus the
        prefix the cache holds (as admission looks it up). Safe to call from another thread:
        it reads a snapshot of the queue and never changes the cache."""
        total = 0
        for request in tuple(self.waiting):  # one C-level copy: the engine may append meanwhile
            tokens = request.all_token_ids
            limit = 0 if request.prompt_logprobs is not None else len(tokens) - 1
            total += len(tokens) - self.prefix_cache.cached_prefix_tokens(
                tokens, request.cache_salt, max_tokens=limit)
        return total

    def add(self, request: Request) -> None:
        request.speculating = bool(self.max_drafts) and speculative.eligible(request)
        self._num_added += 1
        request.arrival_seq = self._num_added
        self._queue(request)

    def _queue(self, request: Request, front: bool = False) -> None:
        """Into the waiting queue: by (priority, arrival) under the priority policy; else at
        the back, or at the `front` (a preempted request goes first again)."""
        if self.by_priority:
            bisect.insort(self.waiting, request, key=_priority_key)
        elif front:
            self.waiting.appendleft(request)
        else:
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
        deferred: list[Request] = []  # prefills that yield the budget to a better waiting one
        if self.by_priority:
            self._preempt_for_priority()
        decoding_first = sorted(self.running,
                                key=lambda r: r.num_tokens - r.num_computed_tokens > 1)
        if self.by_priority and self.waiting:
            head = _priority_key(self.waiting[0])
            deferred = [r for r in decoding_first
                        if r.num_tokens - r.num_computed_tokens > 1 and _priority_key(r) > head]
            decoding_first = [r for r in decoding_first if r not in deferred]
        budget, preempted = self._schedule_running(decoding_first, budget, chunks, scheduled)
        if not preempted:
            budget = self._admit(budget, chunks)
        if deferred:
            scheduled.update(chunk.request_id for chunk in chunks)  # (admitted ones too)
            budget, _ = self._schedule_running(deferred, budget, chunks, scheduled)
        if not chunks:
            return None
        running = self._running_by_id()
        wants_logprobs = any(
            chunk.wants_sample and running[chunk.request_id].want_logprobs for chunk in chunks)
        return SchedulerOutput(chunks=tuple(chunks), wants_logprobs=wants_logprobs)

    def update_after_step(self, output: SchedulerOutput,
                          num_accepted: dict[str, int] | None = None) -> None:
        """The chunks' KV is computed: advance each sequence and cache its whole blocks. A
        verified chunk advances by its last token and the drafts accepted (`num_accepted`,
        before the engine appends them): the KV of rejected drafts is past the computed
        tokens, and later steps overwrite it."""
        running = self._running_by_id()
        for chunk in output.chunks:
            request = running[chunk.request_id]
            before = request.num_computed_tokens // self.page_size
            tokens = request.all_token_ids
            if chunk.draft_token_ids:
                accepted = (num_accepted or {}).get(chunk.request_id, 0)
                request.num_computed_tokens += 1 + accepted
                tokens = tokens + list(chunk.draft_token_ids[:accepted])
            else:
                request.num_computed_tokens += len(chunk.token_ids)
            full_blocks = request.num_computed_tokens // self.page_size
            if full_blocks > before:
                self.prefix_cache.insert(tokens[:full_blocks * self.page_size],
                                         request.page_ids[:full_blocks], request.cache_salt)

    def continue_decodes(self, requests: list[Request]) -> list[SequenceChunk] | None:
        """Async scheduling: the next decode chunk of each of `requests`, whose last token is
        still being sampled on device (so not in `all_token_ids` yet): it goes at position
        `num_computed_tokens` (updated for the step in flight), its token id a placeholder (0)
        the runner replaces with the device's. Pages come from the free list or idle cached
        prefixes, never by preempting; None when they run short (the pages taken so far stay
        with their requests: a synchronous step uses them)."""
        chunks = []
        for request in requests:
            start = request.num_computed_tokens
            missing = -(-(start + 1) // self.page_size) - len(request.page_ids)
            if missing > 0:
                page_ids = self._allocate(missing)
                if page_ids is None:
                    return None
                request.page_ids.extend(page_ids)
            chunks.append(SequenceChunk(
                request_id=request.request_id, token_ids=(0,), start_position=start,
                page_ids=tuple(request.page_ids[:-(-(start + 1) // self.page_size)]),
                sampling=request.sampling, wants_sample=True, row_slot=request.row_slot))
        return chunks

    # -- helpers ---------------------------------------------------------------------------

    def _schedule_running(self, requests: list[Request], budget: int,
                          chunks: list[SequenceChunk], scheduled: set[str]) -> tuple[int, bool]:
        """The next chunk of each running request in order while the budget lasts; returns
        the budget left and whether something was preempted for pages."""
        preempted = False
        num_verified = sum(bool(chunk.draft_token_ids) for chunk in chunks)
        for request in requests:
            if budget == 0:
                break
            if request not in self.running:
                continue  # preempted earlier in this step
            num_new = min(request.num_tokens - request.num_computed_tokens, budget,
                          self._max_chunk_tokens)
            fits, preempted_any = self._reserve_running(request, num_new, scheduled)
            preempted |= preempted_any
            if fits:
                drafts = ()
                if num_new == 1 and num_verified < self.max_verify_rows:
                    drafts = self._drafts(request, budget - 1)
                    num_verified += bool(drafts)
                chunks.append(self._chunk(request, num_new, drafts=drafts))
                scheduled.add(request.request_id)
                budget -= num_new + len(drafts)
        return budget, preempted

    def _drafts(self, request: Request, budget: int) -> tuple[int, ...]:
        """N-gram drafts for a decoding request (pages for them from the free list or idle
        cached prefixes: speculation never preempts), or ()."""
        stopping = request.stopping
        if not request.speculating or len(request.output_token_ids) < stopping.min_tokens:
            return ()
        limit = min(self.max_drafts, budget,
                    stopping.max_tokens - len(request.output_token_ids) - 1,
                    self.config.max_model_len - request.num_tokens)
        drafts = speculative.propose(request.all_token_ids, limit)
        if not drafts:
            return ()
        missing = self._pages_missing(request, 1 + len(drafts))
        if missing:
            page_ids = self._allocate(missing)
            if page_ids is None:
                return ()
            request.page_ids.extend(page_ids)
        return drafts

    def _preempt_for_priority(self) -> None:
        """Before a step (priority policy): while the best waiting request finds no free row,
        or too few pages for its first chunk, preempt the worst running request of a worse
        priority that has not sampled its first token."""
        while self.waiting:
            head = self.waiting[0]
            rows_full = len(self.running) >= self.config.max_num_seqs
            first_chunk = min(head.num_tokens, self.config.max_num_batched_tokens,
                              self._max_chunk_tokens)
            pages_needed = -(-first_chunk // self.page_size)
            pages_short = pages_needed > self.allocator.num_free and (
                pages_needed > self.allocator.num_free + self.prefix_cache.num_evictable())
            if not (rows_full or pages_short):
                return
            victims = [r for r in self.running if not r.output_token_ids
                       and r.priority > head.priority]
            if not victims:
                return
            victim = max(victims, key=_priority_key)
            log.info("preempting %s (priority %d) for %s (priority %d)", victim.request_id,
                     victim.priority, head.request_id, head.priority)
            self._preempt(victim)

    def _running_by_id(self) -> dict[str, Request]:
        return {request.request_id: request for request in self.running}

    def _chunk(self, request: Request, num_new: int, admitted_now: bool = False,
               drafts: tuple[int, ...] = ()) -> SequenceChunk:
        start = request.num_computed_tokens
        end = start + num_new
        tokens = request.all_token_ids[start:end]
        wants_sample = end == request.num_tokens
        tokens, end = tokens + list(drafts), end + len(drafts)
        row_init = None
        if admitted_now and request.row_slot is not None:
            row_init = (tuple(request.all_token_ids), len(request.prompt_token_ids))
        banned, min_tokens_ids = (), ()
        if wants_sample:
            banned = banned_next_ids(request.sampling.bad_words_token_ids,
                                                request.output_token_ids)
            min_tokens_ids = self._min_tokens_ids(request)
        return SequenceChunk(
            request_id=request.request_id, token_ids=tuple(tokens), start_position=start,
            page_ids=tuple(request.page_ids[:-(-end // self.page_size)]),
            sampling=request.sampling, wants_sample=wants_sample,
            wants_scores=wants_sample and bool(request.score_label_ids),
            row_slot=request.row_slot, row_init=row_init, banned_token_ids=banned,
            min_tokens_ids=min_tokens_ids,
            prompt_targets=(tuple(request.prompt_token_ids[start + 1:end + 1])
                            if request.prompt_logprobs is not None else ()),
            draft_token_ids=drafts)

    def _min_tokens_ids(self, request: Request) -> tuple[int, ...]:
        stopping = request.stopping
        if len(request.output_token_ids) >= stopping.min_tokens or request.grammar is not None:
            return ()  # a constrained request's min_tokens is in its grammar bitmask (engine)
        eos = () if stopping.ignore_eos else self.eos_token_ids
        ids = tuple(dict.fromkeys((*eos, *stopping.stop_token_ids)))
        return ids[:MAX_MIN_TOKENS_IDS]

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
        log.info("preempting %s (%d tokens to recompute)",
                 request.request_id, request.num_computed_tokens)
        self.running.remove(request)
        self._release_pages(request)
        request.num_preemptions += 1
        self.num_preemptions += 1
        self._queue(request, front=True)

    def _release_pages(self, request: Request) -> None:
        self.allocator.release(request.page_ids)
        request.page_ids = []
        request.num_computed_tokens = 0
        if request.row_slot is not None:  # rebuilt from its tokens when readmitted
            self._free_row_slots.append(request.row_slot)
            request.row_slot = None

    def _admit(self, budget: int, chunks: list[SequenceChunk]) -> int:
        """Admit waiting requests while rows, budget and pages allow; returns the budget left.
        A choice whose sibling (same prompt, n > 1) is still prefilling waits for it, then
        finds the prompt's pages in the prefix cache: the prompt is computed once."""
        held: list[Request] = []
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting.popleft()
            if self._sibling_prefilling(request):
                held.append(request)
                continue
            num_new = self._reserve_admission(request, budget)
            if num_new is None:  # the pool is full of running work: wait for a later step
                self.waiting.appendleft(request)
                break
            self.running.append(request)
            chunks.append(self._chunk(request, num_new, admitted_now=True))
            budget -= num_new
        self.waiting.extendleft(reversed(held))
        return budget

    def _sibling_prefilling(self, request: Request) -> bool:
        if (not request.group_id or not self.prefix_cache.enabled
                or len(request.prompt_token_ids) <= self.page_size):  # no whole page to share
            return False
        return any(other.group_id == request.group_id
                   and other.num_computed_tokens < len(other.prompt_token_ids)
                   for other in self.running)

    def _reserve_admission(self, request: Request, budget: int) -> int | None:
        """Cached prefix + fresh pages for the first chunk; its token count, None if no room."""
        tokens = request.all_token_ids
        # a request that reports prompt logprobs computes its prompt: the cache is skipped
        match_limit = 0 if request.prompt_logprobs is not None else len(tokens) - 1
        cached_pages = self.prefix_cache.match(tokens, request.cache_salt, max_tokens=match_limit)
        self.allocator.acquire(cached_pages)
        request.page_ids = list(cached_pages)
        request.num_computed_tokens = len(cached_pages) * self.page_size
        num_new = min(len(tokens) - request.num_computed_tokens, budget, self._max_chunk_tokens)
        page_ids = self._allocate(self._pages_missing(request, num_new))
        if page_ids is None:
            self._release_pages(request)
            return None
        request.page_ids.extend(page_ids)
        if request.sampling.uses_row_state:
            request.row_slot = self._free_row_slots.pop()
        if not request.admitted:
            request.admitted = True
            request.num_cached_tokens = request.num_computed_tokens
            self.prefix_cache.record_lookup(len(tokens), request.num_computed_tokens)
        return num_new


def _priority_key(request: Request) -> tuple[int, int]:
    """The priority policy's order: lower priority value first, then earlier arrival."""
    return request.priority, request.arrival_seq


def banned_next_ids(bad_words: tuple[tuple[int, ...], ...], output_ids: list[int]) -> tuple:
    """Last tokens of multi-token bad words whose other tokens end the generated text (vLLM:
    matched over generated tokens only)."""
    banned = []
    for word in bad_words:
        prefix = word[:-1]
        if prefix and len(output_ids) >= len(prefix) and tuple(
                output_ids[len(output_ids) - len(prefix):]) == prefix:
            banned.append(word[-1])
    return tuple(dict.fromkeys(banned))[:MAX_BANNED_IDS]
