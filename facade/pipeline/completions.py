"""The completions run: one `Generate` call per prompt, run concurrently, merged.

`open_completion` sends a (checked) completions request to the core (spelling the prompts first
when `echo` asks for them) and awaits every call's admission; `stream_completion` yields its SSE
events (echoed prompts, the deltas, the optional usage chunk; the caller adds `data: [DONE]`);
`complete_completion` reads every response into one `Completion`. Served by POST /v1/completions
(facade/routes/completions.py).

Choice `prompt_index * n + choice_index` is the core's choice `choice_index` of prompt
`prompt_index`. Every call is admitted (first response read) before the first SSE byte. `echo`
prepends the prompt text; token-id prompts are spelled by the core's `Detokenize`. With
`logprobs`, the echoed prompt's logprobs come first (the core's prompt logprobs; the first
token's are null). `best_of` > n (not streaming): the core generates best_of choices per prompt
and the n of highest cumulative logprob are returned. A stream has a chunk for every core step
that produced tokens, even when they add no text yet (an incomplete character), as vLLM's does: a
client sees each token arrive, and its time to first token is the engine's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import Request

from facade.bodies import Completion, CompletionChoice, CompletionChunk, CompletionLogprobs, Usage
from facade.convert import (
    completion_logprobs,
    completion_to_generates,
    echo_logprobs,
    finish_reason,
    prompt_logprobs_json,
    stop_reason,
)
from facade.dependencies import resolve_model
from facade.generation import CallOptions, Generation, call_core
from facade.pipeline.run import ChoiceState, GenerationRun
from facade.protocol import CompletionRequest
from facade.settings import FacadeSettings
from facade.sse import cancel_on_disconnect
from tandem.v1 import inference_pb2 as pb
from tandem.v1.inference_pb2_grpc import InferenceStub


@dataclass(kw_only=True)
class CompletionRun(GenerationRun):
    """One completions request in flight: one core call per prompt; choice indexes are global
    (prompt index × n + the core's choice index)."""

    request: CompletionRequest
    num_prompts: int
    echo_texts: list[str] | None = None  # each prompt as text, when `echo` asks for it

    @property
    def choices_per_prompt(self) -> int:
        """The core's choices per prompt: best_of candidates (non-streaming), else n."""
        return self.request.best_of or self.request.n or 1

    @property
    def num_choices(self) -> int:
        return self.num_prompts * self.choices_per_prompt

    def add(self, call_index: int, response: pb.GenerateResponse) -> list[CompletionChoice]:
        """Record one core response; returns its choices renumbered, for streaming."""
        self.usage.update(call_index, response)
        wants_logprobs = self.request.logprobs is not None
        shown = []
        for delta in response.choices:
            index = call_index * self.choices_per_prompt + delta.index
            state = self.state(index)
            offset = state.add(delta)
            reason = finish_reason(delta)
            if not (delta.text or delta.token_ids or reason is not None
                    or (wants_logprobs and delta.logprobs)):
                continue  # a chunk per step with tokens, even when they add no text yet
            shown.append(CompletionChoice(
                index=index,
                text=delta.text,
                logprobs=completion_logprobs(delta.logprobs, [offset] * len(delta.logprobs))
                if wants_logprobs else None,
                finish_reason=reason,
                stop_reason=stop_reason(delta),
            ))  # fmt: skip
        return shown

    def chunk(self, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
        return self.sse_chunk(CompletionChunk, choices, usage)


async def prompt_texts(
    stub: InferenceStub, request: CompletionRequest, model: str, options: CallOptions
) -> list[str]:
    """Each prompt as text, for `echo` (token-id prompts are detokenized by the core)."""

    async def spell(prompt: str | list[int]) -> str:
        if isinstance(prompt, str):
            return prompt
        detokenize = pb.DetokenizeRequest(model=model, token_ids=prompt)
        response = await call_core(stub.Detokenize, detokenize, options)
        return response.text

    return list(await asyncio.gather(*(spell(prompt) for prompt in request.prompts)))


def _echo(
    run: CompletionRun, texts: list[str], firsts: list[pb.GenerateResponse | None] | None = None
) -> list[CompletionChoice]:
    """Put each prompt's text at the start of its choices; when streaming with logprobs, the
    prompt's logprobs (from each call's first response) go with it."""
    echoed = []
    for prompt_index, text in enumerate(texts):
        logprobs = None
        first = firsts[prompt_index] if firsts else None
        scored = [c for c in first.choices if c.prompt_logprobs] if first is not None else []
        if scored and run.request.logprobs is not None:
            logprobs = echo_logprobs(scored[0].prompt_logprobs, run.request.logprobs)
        for choice_index in range(run.choices_per_prompt):
            index = prompt_index * run.choices_per_prompt + choice_index
            run.state(index).add_text(text)
            echoed.append(CompletionChoice(index=index, text=text, logprobs=logprobs))
    return echoed


async def stream_completion(run: CompletionRun, generation: Generation) -> AsyncIterator[bytes]:
    """The SSE events: echoed prompts, the deltas, the optional usage chunk."""
    continuous = run.request.continuous_usage
    if run.echo_texts is not None:
        for call_index, first in enumerate(generation.first_responses):
            if first is not None:
                run.usage.update(call_index, first)
        echoed = _echo(run, run.echo_texts, generation.first_responses)
        yield run.chunk(echoed, run.usage.prompt_only() if continuous else None)
    async with aclosing(generation.responses()) as responses:
        async for call_index, response in responses:
            choices = run.add(call_index, response)
            if choices:
                yield run.chunk(choices, run.usage.total() if continuous else None)
    run.check_finished()
    if run.request.include_usage:
        yield run.chunk([], run.usage.total())


def _choice_logprobs(
    run: CompletionRun, state: ChoiceState, prompt: ChoiceState
) -> CompletionLogprobs | None:
    """The legacy logprobs of a choice: the echoed prompt's first (when asked for)."""
    request = run.request
    if request.logprobs is None:
        return None
    generated = completion_logprobs(state.logprobs, state.text_offsets)
    if not (request.echo and prompt.prompt_logprobs):
        return generated
    echoed = echo_logprobs(prompt.prompt_logprobs, request.logprobs)
    return CompletionLogprobs(
        tokens=echoed.tokens + generated.tokens,
        token_logprobs=echoed.token_logprobs + generated.token_logprobs,
        top_logprobs=echoed.top_logprobs + generated.top_logprobs,
        text_offset=echoed.text_offset + generated.text_offset,
    )


def _best(run: CompletionRun, prompt_index: int) -> list[ChoiceState]:
    """A prompt's choices to return: with best_of, the n of highest cumulative logprob."""
    per_prompt = run.choices_per_prompt
    states = [run.choices[prompt_index * per_prompt + i] for i in range(per_prompt)]
    if per_prompt > (run.request.n or 1):
        states = sorted(states, key=lambda state: -state.cumulative_logprob)
    return states[: run.request.n or 1]


async def complete_completion(run: CompletionRun, generation: Generation) -> Completion:
    """Read the whole answer (every call's responses) and build the completion."""
    if run.echo_texts is not None:
        _echo(run, run.echo_texts)
    async with aclosing(generation.responses()) as responses:
        async for call_index, response in responses:
            run.add(call_index, response)
    run.check_finished()
    choices = []
    for prompt_index in range(run.num_prompts):
        prompt = run.choices[prompt_index * run.choices_per_prompt]  # choice 0 scores the prompt
        num_top = run.request.prompt_logprobs
        for state in _best(run, prompt_index):
            choices.append(CompletionChoice(
                index=len(choices),
                text=state.text,
                logprobs=_choice_logprobs(run, state, prompt),
                finish_reason=state.finish_reason,
                stop_reason=state.stop_reason,
                prompt_logprobs=prompt_logprobs_json(prompt.prompt_logprobs, num_top)
                if num_top is not None else None,
            ))  # fmt: skip
    return Completion(
        id=run.completion_id,
        created=run.created,
        model=run.model,
        choices=choices,
        usage=run.usage.total(),
    )


async def open_completion(
    body: CompletionRequest,
    request: Request,
    stub: InferenceStub,
    options: CallOptions,
    settings: FacadeSettings,
) -> tuple[CompletionRun, Generation]:
    """Send a (checked) completions request to the core, one call per prompt, and await every
    call's admission (the prompts are spelled first when `echo` asks for them)."""
    model = resolve_model(body.model, settings)
    generates = completion_to_generates(body, model)
    echo_texts = None
    if body.echo:
        echo_texts = await cancel_on_disconnect(request, prompt_texts(stub, body, model, options))
    generation = await cancel_on_disconnect(request, Generation.open(stub, generates, options))
    run = CompletionRun(
        request=body,
        completion_id=f"cmpl-{options.request_id}",
        created=int(time.time()),
        model=generation.model or model,
        num_prompts=len(generates),
        echo_texts=echo_texts,
    )
    return run, generation
