"""The generation engine: its interface and the step loop that runs on its thread.

Owns: `Engine`, what the servicer needs from a generation engine (add a request with an output
sink, abort it, check a grammar), and `LlmEngine`, whose thread (an `EngineThread`) repeats one
step: `schedule()` → `runner.dispatch()` (the forward passes start on the device) → the grammar
bitmask filled on the host meanwhile → `runner.sample()` → `update_from_output()`, turning
sampled tokens into `RequestOutput`s (detokenized, stop conditions applied). The engine stays in
charge of its step: the runner never calls back into it. Requests and aborts arrive through the
thread's inbox and are applied before the next step, so an abort frees its pages within one
step; outputs leave through each request's sink, which must not block. With async scheduling
(core/engine/async_step.py) a decode step stays in flight into the next turn. Latency histograms
are observed here. The radix cache's events are published to `kv_events` at the end of every turn.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from core.cache.events import KvEventHub
from core.config import EngineConfig
from core.engine import speculative
from core.engine.async_step import AsyncSteps
from core.engine.base import EngineThread
from core.engine.detokenizer import IncrementalDetokenizer
from core.engine.metrics import EngineStats
from core.engine.request import FinishReason, Request, RequestOutput, SchedulerOutput, TokenLogprob
from core.engine.scheduler import Scheduler
from core.errors import Overloaded, Unsupported
from core.model_config import ModelConfig
from core.structured import GrammarSpec
from core.structured.compiler import GrammarCompiler
from core.structured.matchers import Accepted, GrammarMatchers, clear_unless_empty
from core.tokenizer import Tokenizer

log = logging.getLogger(__name__)

OutputSink = Callable[[RequestOutput], None]


class Engine(EngineThread):
    """What the servicer needs from a generation engine (besides the thread's lifecycle)."""

    model_config: ModelConfig
    engine_config: EngineConfig  # resolved

    @abc.abstractmethod
    def add_request(self, request: Request, sink: OutputSink) -> None:
        """Queue a request; raises Overloaded or Unavailable. Outputs go to `sink`."""

    @abc.abstractmethod
    def abort(self, request_id: str, notify: bool = False) -> None:
        """Stop a request and free its resources within one step (no-op when finished). With
        `notify`, its sink gets a last output with finish reason ABORT (the Abort RPC: its
        stream ends); without, nothing more is sent (its receiver is gone)."""

    def check_grammar(self, spec: GrammarSpec) -> None:
        """Compile a request's grammar, bounded in time (blocking: call it off the event loop);
        raises InvalidParameter naming `spec.param`, or Unsupported."""
        raise Unsupported("this engine cannot constrain its output", param=spec.param)


@dataclass
class _Tracked:
    """Engine-thread state of one request."""

    request: Request
    sink: OutputSink
    detokenizer: IncrementalDetokenizer
    arrival_s: float  # time.monotonic() when the engine thread took it
    last_token_s: float | None = None  # when its previous token was emitted


class LlmEngine(Engine):
    def __init__(self, runner, model_config: ModelConfig, engine_config: EngineConfig,
                 tokenizer: Tokenizer):
        self.runner = runner
        self.model_config = model_config
        self.engine_config = engine_config
        self.tokenizer = tokenizer  # the detokenizer's and the grammars' (the service's too)
        self.scheduler = Scheduler(engine_config, runner.num_pages, model_config.eos_token_ids)
        self.num_prompt_tokens = 0  # counters for metrics (engine thread writes)
        self.num_generated_tokens = 0
        self.num_forced_tokens = 0  # ...of which a grammar forced (jump-forward)
        self.num_draft_tokens = 0  # n-gram speculation: drafts proposed
        self.num_accepted_draft_tokens = 0  # ... and accepted
        self.jump_forward = engine_config.jump_forward
        self.async_scheduling = engine_config.async_scheduling
        self._async, self._in_flight = AsyncSteps(self), None  # InFlight: sampled, not emitted
        self.num_bitmask_fills = 0  # steps that filled a grammar bitmask
        self.num_fills_hidden = 0  # ...of which the device was still computing when it ended
        self._tracked: dict[str, _Tracked] = {}
        self._num_pending = 0  # added but not yet finished (guarded by _lock)
        # requests added and not taken by the engine thread yet, and their prompt tokens (_lock)
        self._num_in_inbox, self._num_inbox_tokens = 0, 0
        self._lock = threading.Lock()
        self.grammars = _grammar_matchers(tokenizer, model_config)  # None: cannot constrain
        self.kv_events = KvEventHub()  # the radix cache's events, for SubscribeKvEvents
        super().__init__("tandem-engine")

    # -- interface -------------------------------------------------------------------------

    def _on_stopped(self) -> None:
        if self.grammars is not None:
            self.grammars.compiler.close()
        if (close := getattr(self.runner, "close", None)) is not None:  # multi-host: followers
            close()

    @property
    def num_unfinished(self) -> int:
        with self._lock:
            return self._num_pending

    @property
    def compilations_after_warmup(self) -> int:
        return self.runner.compilations_after_warmup

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        cache = scheduler.prefix_cache.stats
        # read while the engine thread moves requests on (inbox → queue → running): backwards,
        # so a request on its way is missed for a moment, never counted twice
        num_running = len(scheduler.running)
        num_queued = len(scheduler.waiting)
        with self._lock:
            num_in_inbox = self._num_in_inbox
        return EngineStats(  # waiting: admitted and not running, in the inbox or the queue
            num_waiting=num_queued + num_in_inbox, num_running=num_running,
            kv_cache_usage=scheduler.kv_cache_usage, num_kv_pages=scheduler.allocator.num_pages,
            compilations_after_warmup=self.compilations_after_warmup,
            page_size_tokens=self.engine_config.page_size,
            prefix_cache_queried_tokens=cache.queried_tokens,
            prefix_cache_hit_tokens=cache.hit_tokens, num_preemptions=scheduler.num_preemptions,
            num_prompt_tokens=self.num_prompt_tokens,
            num_generation_tokens=self.num_generated_tokens,
            num_draft_tokens=self.num_draft_tokens,
            num_accepted_draft_tokens=self.num_accepted_draft_tokens)

    def waiting_uncached_tokens(self) -> int:
        """Tokens the waiting requests still have to compute: the queue's minus what the prefix
        cache holds of them, plus the prompts not taken from the inbox yet (counted whole)."""
        with self._lock:
            num_inbox_tokens = self._num_inbox_tokens
        return self.scheduler.waiting_uncached_tokens() + num_inbox_tokens

    def check_grammar(self, spec: GrammarSpec) -> None:
        if self.grammars is None:
            super().check_grammar(spec)
        self.grammars.compiler.check(spec)

    def add_request(self, request: Request, sink: OutputSink) -> None:
        """Raises Overloaded or Unavailable; for a grammar not checked first (`check_grammar`),
        it is compiled here, which may raise InvalidParameter."""
        self._check_admitting()
        matcher = None
        if request.grammar is not None:
            if self.grammars is None:
                super().check_grammar(request.grammar)
            matcher = self.grammars.new_matcher(request.grammar)
        with self._lock:
            if self._num_pending >= self.engine_config.max_unfinished:
                raise Overloaded("too many requests queued; retry later",
                                 retry_after_s=self.engine_config.retry_after_s)
            if self._num_pending == 0:  # an idle engine's clock starts with its first request
                self._note_progress()
            self._num_pending += 1
            self._num_in_inbox += 1
            self._num_inbox_tokens += len(request.prompt_token_ids)
        if request.sampling.seed is None:
            request.sampling = replace(request.sampling, seed=secrets.randbits(63))
        self._post(("add", (request, matcher), sink))

    def abort(self, request_id: str, notify: bool = False) -> None:
        self._post(("abort", (request_id, notify), None))

    def clear_prefix_cache(self) -> concurrent.futures.Future:
        """Evict every cached block no request holds, on the engine thread; the future gives
        how many pages were freed."""
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._post(("clear_cache", done, None))
        return done

    # -- the loop --------------------------------------------------------------------------

    def _is_idle(self) -> bool:
        return self.scheduler.num_unfinished == 0 and self._in_flight is None

    def _turn(self, items: list) -> None:
        batch = None
        try:
            self._apply(items)
            if (step := self._in_flight) is not None:  # emitted, maybe after the next's dispatch
                batch, self._in_flight = step.batch, self._async.advance(step)
                self._note_progress()
            if self._in_flight is None and (batch := self.scheduler.schedule()) is not None:
                if self.async_scheduling and self._async.can_start(batch):
                    self._in_flight = self._async.start(batch)
                else:
                    self.update_from_output(batch, self._step(batch))
                    self._note_progress()
        except Exception as exc:  # a bug: fail the requests involved, keep serving others
            self._in_flight = None
            log.exception("engine step failed")
            try:
                self._fail_requests(batch, f"engine step failed: {exc}")
            except Exception:  # the engine's own state is broken: refuse new work
                log.critical("engine state is inconsistent: no longer admitting requests",
                             exc_info=True)
                self._accepting = False
                for tracked in list(self._tracked.values()):
                    self._send(tracked.sink, RequestOutput(
                        tracked.request.request_id, (), "", error="the engine failed",
                        finish_reason=FinishReason.ABORT))
                self._tracked.clear()
                with self._lock:
                    self._num_pending = 0
        finally:
            self.kv_events.publish(self.scheduler.prefix_cache.take_events())

    def _step(self, batch: SchedulerOutput):
        """Dispatch the forward passes, fill the grammar bitmask on the host while the device
        computes them (counting whether the fill ended first: it was hidden), then sample."""
        dispatched = self.runner.dispatch(batch)
        rows = self._grammar_rows(batch)
        if not rows:
            return self.runner.sample(dispatched)
        bitmask = self._fill_bitmask(rows, len(batch.chunks))
        self.num_bitmask_fills += 1
        self.num_fills_hidden += not dispatched.is_ready()
        return self.runner.sample(dispatched, bitmask, frozenset(index for _, index in rows))

    def _apply(self, items: list) -> None:
        """Requests added and aborted since the last step, in order."""
        for kind, payload, sink in items:
            if kind == "add":
                self._take(*payload, sink)
            elif kind == "abort" and payload[0] in self._tracked:
                self._abort(self._tracked[payload[0]], notify=payload[1])
            elif kind == "clear_cache":
                payload.set_result(self.scheduler.prefix_cache.clear())

    def _abort(self, tracked: _Tracked, notify: bool) -> None:
        """Release an aborted request; with `notify`, end its output with finish reason ABORT
        (the text held back for stop strings comes out first)."""
        request = tracked.request
        request.finish_reason = FinishReason.ABORT
        self._release(request)
        if notify:
            self._send(tracked.sink, RequestOutput(
                request.request_id, (), tracked.detokenizer.flush(),
                finish_reason=FinishReason.ABORT,
                completion_tokens=len(request.output_token_ids),
                cached_tokens=request.num_cached_tokens,
                cumulative_logprob=request.cumulative_logprob))

    def _take(self, request: Request, matcher, sink: OutputSink) -> None:
        """Start tracking a new request (engine thread)."""
        with self._lock:  # (counted nowhere until scheduler.add: never counted twice)
            self._num_in_inbox -= 1
            self._num_inbox_tokens -= len(request.prompt_token_ids)
        if request.request_id in self._tracked:
            with self._lock:
                self._num_pending -= 1
            self._send(sink, RequestOutput(
                request.request_id, (), "", finish_reason=FinishReason.ABORT,
                error=f"duplicate request id {request.request_id}"))
            return
        free = matcher is None or request.grammar.kind == "text"  # ("text": a budget only)
        detokenizer = IncrementalDetokenizer(  # stop strings never cut constrained output
            self.tokenizer, request.prompt_token_ids,
            stop_strings=request.stopping.stop_strings if free else (),
            include_stop_str_in_output=request.stopping.include_stop_str_in_output,
            skip_special_tokens=request.stopping.skip_special_tokens)
        self._tracked[request.request_id] = _Tracked(request, sink, detokenizer,
                                                     arrival_s=time.monotonic())
        if matcher is not None:
            self.grammars.add(request.request_id, matcher)
        self.num_prompt_tokens += len(request.prompt_token_ids)
        self.scheduler.add(request)
        if matcher is not None:  # what the grammar forces first goes with the prompt's chunk
            self._emit(self._tracked[request.request_id], [])

    def _grammar_rows(self, batch: SchedulerOutput) -> list[tuple[str, int]]:
        """(request id, chunk index) of the step's chunks whose next token a grammar restricts."""
        if not self.grammars:  # None, or no constrained request running
            return []
        return [(chunk.request_id, index) for index, chunk in enumerate(batch.chunks)
                if chunk.wants_sample and chunk.request_id in self.grammars]

    def _fill_bitmask(self, rows: list[tuple[str, int]], num_rows: int) -> np.ndarray:
        """The grammar rows' bitmask. min_tokens of a constrained request is applied here, not
        by the sampler's min_tokens stage: EOS is cleared while the request is short, unless
        EOS is all its grammar allows (the grammar's end wins over min_tokens)."""
        bitmask = self.grammars.fill(rows, num_rows)
        for request_id, index in rows:
            request = self._tracked[request_id].request
            if len(request.output_token_ids) < request.stopping.min_tokens:
                clear_unless_empty(bitmask[index], self.model_config.eos_token_ids)
        return bitmask

    def update_from_output(self, batch: SchedulerOutput, step) -> None:
        num_accepted = {batch.chunks[index].request_id: speculative.num_accepted(verified)
                        for index, verified in step.verified.items()}
        self.scheduler.update_after_step(batch, num_accepted)
        self.emit_step(batch, step, num_accepted)

    def tracked_request(self, request_id: str) -> Request | None:
        return tracked.request if (tracked := self._tracked.get(request_id)) else None

    def emit_step(self, batch: SchedulerOutput, step, num_accepted, indices=None) -> None:
        """A step's outputs (the scheduler updated): every chunk's, or those at `indices`."""
        for index in range(len(batch.chunks)) if indices is None else indices:
            chunk = batch.chunks[index]
            tracked = self._tracked[chunk.request_id]
            request = tracked.request
            if chunk.wants_prompt_logprobs:
                for offset, entry in enumerate(step.prompt_logprobs[index], start=1):
                    request.prompt_logprob_entries[chunk.start_position + offset] = entry
            if not chunk.wants_sample:
                continue  # a prefill chunk short of the prompt's end
            if request.score_label_ids is not None:
                self._finish_scoring(tracked, step.score_logprobs.get(index))
                continue
            if request.stopping.max_tokens == 0:  # prompt logprobs only
                self._finish_prompt_only(tracked)
                continue
            if chunk.draft_token_ids:
                self._emit_verified(tracked, chunk, step.verified[index],
                                    num_accepted[chunk.request_id])
                continue
            token_id = int(step.token_ids[index])
            top = ()
            if request.want_logprobs:
                top = tuple((int(i), float(lp)) for i, lp in zip(
                    step.top_ids[index][:request.top_logprobs],
                    step.top_logprobs[index][:request.top_logprobs], strict=True))
            self._emit(tracked, [TokenLogprob(token_id, float(step.logprobs[index]), top)])

    def _finish_scoring(self, tracked: _Tracked, logprobs) -> None:
        """A prefill-only request is done: report its labels' log-probabilities."""
        labels = tracked.request.score_label_ids
        label_logprobs = tuple(logprobs[list(labels)].tolist()) if labels else ()
        self._finish_without_tokens(tracked, FinishReason.STOP, label_logprobs=label_logprobs)

    def _finish_prompt_only(self, tracked: _Tracked) -> None:
        """max_tokens 0: the prompt's logprobs were all that was asked for."""
        self._finish_without_tokens(tracked, FinishReason.LENGTH,
                                    prompt_logprobs=_take_prompt_logprobs(tracked.request))

    def _finish_without_tokens(self, tracked: _Tracked, reason: FinishReason, **report) -> None:
        """End a request that generated nothing: release it, then send its one output."""
        request = tracked.request
        request.finish_reason = reason
        self.metrics.e2e_request_latency_s.observe(time.monotonic() - tracked.arrival_s)
        self._release(request)
        self._send(tracked.sink, RequestOutput(
            request_id=request.request_id, new_token_ids=(), text_delta="",
            finish_reason=reason, cached_tokens=request.num_cached_tokens, **report))

    def _observe_latency(self, tracked: _Tracked) -> None:
        now = time.monotonic()
        if tracked.last_token_s is None:
            self.metrics.time_to_first_token_s.observe(now - tracked.arrival_s)
        else:
            self.metrics.inter_token_latency_s.observe(now - tracked.last_token_s)
        tracked.last_token_s = now

    def _emit_verified(self, tracked: _Tracked, chunk, verified, num_accepted: int) -> None:
        """A speculation chunk's tokens: the accepted drafts, then the token sampled where the
        first draft was rejected (or the bonus token after the last); its counts, and the
        switch-off when acceptance stays low."""
        request = tracked.request
        drafts = chunk.draft_token_ids
        request.num_draft_tokens += len(drafts)
        request.num_accepted_draft_tokens += num_accepted
        self.num_draft_tokens += len(drafts)
        self.num_accepted_draft_tokens += num_accepted
        if not speculative.keep_speculating(request):
            request.speculating = False
            log.debug("%s: speculation off (%d of %d drafts accepted)", request.request_id,
                      request.num_accepted_draft_tokens, request.num_draft_tokens)
        self._emit(tracked, speculative.verified_tokens(
            chunk.draft_token_ids, verified, num_accepted,
            request.top_logprobs if request.want_logprobs else 0))

    def _emit(self, tracked: _Tracked, sampled: list[TokenLogprob]) -> None:
        """Advance a request by its sampled tokens (each with its raw logprob), then by the
        tokens its grammar forces (jump-forward), stopping where it finishes; send them as one
        output. Forced tokens are appended without sampling: the next step computes them as
        one chunk (the scheduler's multi-token path) and samples after the last."""
        request = tracked.request
        new_token_ids: list[int] = []
        logprobs: list[TokenLogprob] = []
        text, stop_string, stop_token_id = "", None, None
        for entry in sampled:
            request.output_token_ids.append(entry.token_id)
            request.cumulative_logprob += entry.logprob
            advanced = self._advance(tracked, entry.token_id)
            if advanced is None:
                return  # the grammar failed the request (it was told)
            new_token_ids.append(entry.token_id)
            if request.want_logprobs:
                logprobs.append(entry)
            text += advanced[0]
            stop_string, stop_token_id = advanced[1:]
            if request.finish_reason is not None:
                break
        if request.finish_reason is None:
            for token_id in self._forced_tokens(request):
                request.output_token_ids.append(token_id)
                self.num_forced_tokens += 1
                advanced = self._advance(tracked, token_id)
                if advanced is None:
                    return
                new_token_ids.append(token_id)
                text += advanced[0]
                stop_string, stop_token_id = advanced[1:]
                if request.finish_reason is not None:
                    break
        if not new_token_ids:
            return
        self.num_generated_tokens += len(new_token_ids)
        self._observe_latency(tracked)
        if request.finish_reason is not None:  # released before the receiver hears of it
            self.metrics.e2e_request_latency_s.observe(time.monotonic() - tracked.arrival_s)
            self._release(request)
        self._send(tracked.sink, RequestOutput(
            request_id=request.request_id, new_token_ids=tuple(new_token_ids),
            text_delta=text, logprobs=tuple(logprobs), finish_reason=request.finish_reason,
            stop_string=stop_string, stop_token_id=stop_token_id,
            completion_tokens=len(request.output_token_ids),
            cached_tokens=request.num_cached_tokens,
            prompt_logprobs=_take_prompt_logprobs(request),
            cumulative_logprob=request.cumulative_logprob,
            num_draft_tokens=request.num_draft_tokens,
            num_accepted_draft_tokens=request.num_accepted_draft_tokens))

    def _forced_tokens(self, request: Request) -> list[int]:
        """The tokens the request's grammar forces next (llguidance's fast-forward tokens, in
        its canonical tokenization), or [] when jump-forward does not apply: it is off, the
        request is unconstrained or only budgeted ("text"), it reports logprobs (forced
        tokens have none sampled: they are left to the model), or a per-row logits stage
        could refuse or reweigh a forced token (logit_bias, allowed_token_ids, bad words,
        penalties, whose device counts see sampled tokens only)."""
        if (not self.jump_forward or not self.grammars or request.request_id not in self.grammars
                or request.grammar.kind == "text" or request.want_logprobs
                or request.sampling.uses_row_state or request.sampling.bad_words_token_ids):
            return []
        return self.grammars.forced_tokens(request.request_id)

    def _advance(self, tracked: _Tracked,
                 token_id: int) -> tuple[str, str | None, int | None] | None:
        """Apply one appended output token: the grammar, stop conditions, detokenizing. Returns
        (text delta, stop string, stop token id), or None when the grammar failed the request
        (which is then released and told)."""
        request, stopping = tracked.request, tracked.request.stopping
        stop_token_id, stop_string, text = None, None, ""
        accepted = None  # a constrained request: its matcher's verdict on the token
        if self.grammars and request.request_id in self.grammars:
            accepted = self.grammars.accept(request.request_id, token_id)
            if accepted is Accepted.FAILED:
                self._fail_grammar(tracked)
                return None
            if request.grammar.kind == "text":  # a thinking budget: the output is not bound
                accepted = None
        if token_id in self.model_config.eos_token_ids and (
                not stopping.ignore_eos or accepted is not None):
            request.finish_reason = FinishReason.STOP
        elif token_id in stopping.stop_token_ids and accepted is None:
            request.finish_reason, stop_token_id = FinishReason.STOP, token_id
        elif stopping.detokenize:  # stop strings count from min_tokens on (vLLM)
            step = tracked.detokenizer.push(
                token_id, check_stop=len(request.output_token_ids) >= stopping.min_tokens)
            text, stop_string = step.text_delta, step.stop_string
            if stop_string is not None or accepted is Accepted.COMPLETE:
                request.finish_reason = FinishReason.STOP
        if request.finish_reason is None and (
                len(request.output_token_ids) >= stopping.max_tokens
                or request.num_tokens >= self.engine_config.max_model_len):
            request.finish_reason = FinishReason.LENGTH
        if request.finish_reason is not None and stop_string is None and stopping.detokenize:
            text += tracked.detokenizer.flush()
        return text, stop_string, stop_token_id

    def _fail_grammar(self, tracked: _Tracked) -> None:
        """A matcher refused a token or hit a limit: fail the request, not the engine."""
        request = tracked.request
        message = f"the output constraint failed: {self.grammars.error(request.request_id)}"
        log.warning("%s: %s", request.request_id, message)
        request.finish_reason = FinishReason.ABORT
        self._release(request)
        self._send(tracked.sink, RequestOutput(
            request.request_id, (), "", error=message, error_param=request.grammar.param,
            finish_reason=FinishReason.ABORT))

    def _fail_requests(self, batch: SchedulerOutput | None, message: str) -> None:
        """Fail the batch's requests (every request when the failure was outside a step)."""
        if batch is not None:
            request_ids = [chunk.request_id for chunk in batch.chunks]
        else:
            request_ids = list(self._tracked)
        for request_id in request_ids:
            tracked = self._tracked.get(request_id)
            if tracked is None:
                continue  # already finished in this step
            request = tracked.request
            request.finish_reason = FinishReason.ABORT
            self._release(request)
            self._send(tracked.sink, RequestOutput(request.request_id, (), "", error=message,
                                              finish_reason=FinishReason.ABORT))

    def _send(self, sink: OutputSink, output: RequestOutput) -> None:
        try:
            sink(output)
        except Exception:  # the receiver is gone (its event loop closed); drop the output
            log.warning("dropping output of %s: sink failed", output.request_id)

    def _release(self, request: Request) -> None:
        self.scheduler.finish(request)
        if self.grammars is not None:
            self.grammars.remove(request.request_id)
        if self._tracked.pop(request.request_id, None) is not None:
            with self._lock:
                self._num_pending -= 1


def _take_prompt_logprobs(request: Request) -> tuple[TokenLogprob, ...]:
    """The prompt's logprobs, once (with its first output): the first token has none."""
    if request.prompt_logprobs is None or not request.prompt_logprob_entries:
        return ()
    entries, keep = request.prompt_logprob_entries, request.prompt_logprobs
    request.prompt_logprob_entries, request.prompt_logprobs = {}, None  # sent: never again
    first = TokenLogprob(request.prompt_token_ids[0], 0.0)
    return (first, *(TokenLogprob(entries[position].token_id, entries[position].logprob,
                                  entries[position].top[:keep])
                     for position in range(1, len(request.prompt_token_ids))))


def _grammar_matchers(tokenizer: Tokenizer, model_config: ModelConfig) -> GrammarMatchers | None:
    """The model's llguidance tokenizer and matchers (None when its tokenizer cannot have one)."""
    try:
        compiler = GrammarCompiler(tokenizer.hf_tokenizer, model_config.vocab_size,
                                   model_config.eos_token_ids)
    except ValueError as exc:  # llguidance takes fast (Rust `tokenizers`) tokenizers only
        log.warning("structured outputs are off for this model: %s", exc)
        return None
    return GrammarMatchers(compiler)
