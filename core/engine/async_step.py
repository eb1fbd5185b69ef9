"""Async scheduling (`EngineConfig.async_scheduling`): the host's work on decode step t overlaps
the device's step t + 1.

Owns `InFlight` (a step whose sampling is dispatched, its tokens still on device) and
`AsyncSteps`, which the engine's turn drives (core/engine/loop.py):

- `start(batch)`: a scheduled batch of plain decodes (`can_start`) is dispatched and sampled
  without waiting for the copy; it stays in flight to the next turn.
- `advance(step)`: the next turn. The scheduler is updated for the step in flight (a decode's
  KV advance needs only tokens the host has); if every running request goes on decoding
  (`_follow`), the next decode step is dispatched with its input tokens gathered on device
  from the step in flight (no host round trip); then the step in flight is copied to the host
  and emitted (detokenized, stop conditions applied) while the device computes the next one.
  A row whose request finished or was aborted meanwhile is discarded: its KV write landed in
  the request's own last page, which is past the cached blocks and freed only after.
  Otherwise `advance` returns None and the engine goes back to the synchronous step.

What falls back (one synchronous step, then the pipeline starts again): prefill chunks and
admissions (a waiting request that could be admitted), a request under a grammar, n-gram
speculation, multi-token bad words, min_tokens still open, scores and prompt logprobs, a shrunk
batch that fits a smaller decode bucket (it is re-packed), a KV pool too short to grow without
preempting. Penalties, logit bias and logprobs stay on: their state is on device.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.engine.request import Request, SchedulerOutput


@dataclass(frozen=True)
class InFlight:
    """A step dispatched and sampled on device, not copied yet."""

    batch: SchedulerOutput
    sampled: object  # the runner's SampledStep
    requests: list[Request]  # chunk i's request (identity: one released meanwhile is skipped)


class AsyncSteps:
    def __init__(self, engine):
        self.engine = engine  # LlmEngine: its scheduler, runner, tracked requests, emitting
        self.num_continued = 0  # steps dispatched from the device tokens of the one before

    def can_start(self, batch: SchedulerOutput) -> bool:
        """Is a scheduled batch plain decodes without a grammar (one decode call, no host
        input the sampler waits for)?"""
        engine = self.engine
        if not engine.runner.supports_async_scheduling:
            return False
        return all(len(chunk.token_ids) == 1 and chunk.wants_sample and not chunk.wants_scores
                   and not chunk.draft_token_ids and not chunk.wants_prompt_logprobs
                   and not (engine.grammars and chunk.request_id in engine.grammars)
                   and engine.tracked_request(chunk.request_id).score_label_ids is None
                   for chunk in batch.chunks)

    def start(self, batch: SchedulerOutput) -> InFlight:
        runner = self.engine.runner
        requests = [self.engine.tracked_request(chunk.request_id) for chunk in batch.chunks]
        return InFlight(batch, runner.sample_async(runner.dispatch(batch)), requests)

    def advance(self, step: InFlight) -> InFlight | None:
        """Dispatch the step after `step` when it can follow on device, then emit `step`;
        returns the new step in flight, or None (`step` emitted; schedule synchronously)."""
        engine = self.engine
        live = [index for index, request in enumerate(step.requests)
                if engine.tracked_request(request.request_id) is request
                and request.finish_reason is None]
        engine.scheduler.update_after_step(
            SchedulerOutput(tuple(step.batch.chunks[index] for index in live)))
        following = self._follow(step, live) if engine.async_scheduling else None
        engine.emit_step(step.batch, engine.runner.fetch(step.sampled), {}, live)
        return following

    def _follow(self, step: InFlight, live: list[int]) -> InFlight | None:
        """Dispatch the next decode step of `step`'s live rows, fed from its device tokens, or
        None when a synchronous step is needed."""
        engine = self.engine
        scheduler, runner = engine.scheduler, engine.runner
        if not live or len(live) != len(scheduler.running):
            return None  # (a request running outside the step: it needs the scheduler)
        if scheduler.waiting and (scheduler.by_priority
                                  or len(scheduler.running) < engine.engine_config.max_num_seqs):
            return None  # a waiting request could be admitted (or preempt, by priority)
        requests = [step.requests[index] for index in live]
        running = {id(request) for request in scheduler.running}
        if any(id(request) not in running or not self._continues(request)
               for request in requests):
            return None
        group, previous_tokens = step.sampled.decode_call()
        row_of = {index: row for row, index in enumerate(group)}
        following = [(index, request) for index, request in zip(live, requests, strict=True)
                     if not self._finishes_by_length(request)]
        if not following or runner.decode_rows(len(following)) != previous_tokens.shape[0]:
            return None  # nothing goes on, or a smaller bucket fits: re-pack synchronously
        chunks = scheduler.continue_decodes([request for _, request in following])
        if chunks is None:
            return None
        batch = SchedulerOutput(tuple(chunks), wants_logprobs=any(
            request.want_logprobs for _, request in following))
        dispatched = runner.dispatch_continued(batch, step.sampled,
                                               [row_of[index] for index, _ in following])
        self.num_continued += 1
        return InFlight(batch, runner.sample_async(dispatched),
                        [request for _, request in following])

    def _continues(self, request: Request) -> bool:
        """Can the request's next decode chunk be built before its last token is known?"""
        engine = self.engine
        return (not (engine.grammars and request.request_id in engine.grammars)
                and not request.speculating
                and not any(len(word) > 1 for word in request.sampling.bad_words_token_ids)
                and len(request.output_token_ids) + 1 >= request.stopping.min_tokens)

    def _finishes_by_length(self, request: Request) -> bool:
        """Will the token in flight end the request by max_tokens or the context length? (Its
        next row would be discarded: it is left out. Kept, it would still be in range: it feeds
        the last token, at a position below max_model_len.)"""
        return (len(request.output_token_ids) + 1 >= request.stopping.max_tokens
                or request.num_tokens + 1 >= self.engine.engine_config.max_model_len)
