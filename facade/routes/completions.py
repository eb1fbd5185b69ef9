"""POST /v1/completions: one `Generate` call per prompt, run concurrently, merged.

Choice `prompt_index * n + choice_index` is the core's choice `choice_index` of prompt
`prompt_index`. Every call is admitted (first response read) before the first SSE byte. `echo`
prepends the prompt text; token-id prompts are spelled by the core's `Detokenize`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.convert import (
    GenerationRun,
    completion_logprobs,
    completion_to_generates,
    finish_reason,
    stop_reason,
)
from facade.dependencies import (
    API_KEY_REQUIRED,
    CoreCallOptions,
    CoreStub,
    Settings,
    resolve_model,
)
from facade.generation import CallOptions, Generation, call_core
from facade.limits import Limits, check_completion_limits
from facade.openapi import COMPLETION_RESPONSES
from facade.protocol import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionRequest,
    Usage,
)
from facade.protocol_policy import apply_field_policy, ignored_header
from facade.sse import (
    STREAM_HEADERS,
    EventStreamResponse,
    cancel_on_disconnect,
    guarded_stream,
)
from tandem.v1 import inference_pb2 as pb
from tandem.v1.inference_pb2_grpc import InferenceStub

router = APIRouter(tags=["completions"])


@dataclass(kw_only=True)
class CompletionRun(GenerationRun):
    """One completions request in flight: one core call per prompt; choice indexes are global
    (prompt index × n + the core's choice index)."""

    request: CompletionRequest
    num_prompts: int

    @property
    def choices_per_prompt(self) -> int:
        return self.request.n or 1

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
            if not delta.text and reason is None and not (wants_logprobs and delta.logprobs):
                continue
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


def _echo(run: CompletionRun, texts: list[str]) -> list[CompletionChoice]:
    """Put each prompt's text at the start of its choices."""
    echoed = []
    for prompt_index, text in enumerate(texts):
        for choice_index in range(run.choices_per_prompt):
            index = prompt_index * run.choices_per_prompt + choice_index
            run.state(index).add_text(text)
            echoed.append(CompletionChoice(index=index, text=text))
    return echoed


async def stream_completion(
    run: CompletionRun, generation: Generation, echo_texts: list[str] | None
) -> AsyncIterator[bytes]:
    """The SSE events: echoed prompts, the deltas, the optional usage chunk."""
    continuous = run.request.continuous_usage
    if echo_texts is not None:
        for call_index, first in enumerate(generation.first_responses):
            if first is not None:
                run.usage.update(call_index, first)
        echoed = _echo(run, echo_texts)
        yield run.chunk(echoed, run.usage.prompt_only() if continuous else None)
    async with aclosing(generation.responses()) as responses:
        async for call_index, response in responses:
            choices = run.add(call_index, response)
            if choices:
                yield run.chunk(choices, run.usage.total() if continuous else None)
    run.check_finished()
    if run.request.include_usage:
        yield run.chunk([], run.usage.total())


async def _complete(
    run: CompletionRun, generation: Generation, echo_texts: list[str] | None
) -> Completion:
    if echo_texts is not None:
        _echo(run, echo_texts)
    async with aclosing(generation.responses()) as responses:
        async for call_index, response in responses:
            run.add(call_index, response)
    run.check_finished()
    wants_logprobs = run.request.logprobs is not None
    choices = []
    for index in range(run.num_choices):
        state = run.choices[index]
        choices.append(CompletionChoice(
            index=index,
            text=state.text,
            logprobs=completion_logprobs(state.logprobs, state.text_offsets)
            if wants_logprobs else None,
            finish_reason=state.finish_reason,
            stop_reason=state.stop_reason,
        ))  # fmt: skip
    return Completion(
        id=run.completion_id,
        created=run.created,
        model=run.model,
        choices=choices,
        usage=run.usage.total(),
    )


@router.post(
    "/v1/completions",
    response_model=None,
    responses=COMPLETION_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """OpenAI (legacy) completions, streaming and not; several prompts run concurrently."""
    ignored = ignored_header(apply_field_policy(body, "completions"))
    check_completion_limits(body, limits)
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
    )
    if body.stream:
        events = guarded_stream(
            stream_completion(run, generation, echo_texts), generation.cancel, run.completion_id
        )
        return EventStreamResponse(events, headers={**STREAM_HEADERS, **ignored})
    try:
        completion = await cancel_on_disconnect(request, _complete(run, generation, echo_texts))
    finally:
        generation.cancel()
    return JSONResponse(completion.model_dump(mode="json"), headers=ignored)
