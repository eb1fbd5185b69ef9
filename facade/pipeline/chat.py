"""The chat run: one `Generate` call with chat input, opened, streamed or aggregated.

`open_chat` sends a (checked) chat request to the core and awaits admission; `stream_chat`
yields its SSE events: the core's first response is awaited before the first SSE byte, then a
role chunk per choice, one chunk per core response, an optional usage chunk (`choices: []`)
(the caller adds `data: [DONE]`); `complete_chat` reads every response into one
`ChatCompletion`. POST /v1/chat/completions (facade/routes/chat.py) and POST /v1/responses
(facade/routes/responses.py, facade/responses/stream.py, which also uses `chunk_choice`) both
serve their requests through here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import Request

from facade.bodies import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    CustomToolCallBody,
    DeltaCustom,
    DeltaFunction,
    DeltaMessage,
    DeltaToolCall,
    ResponseCustomToolCall,
    ResponseToolCall,
    Usage,
)
from facade.convert import (
    chat_logprobs,
    chat_to_generate,
    finish_reason,
    prompt_logprobs_json,
    stop_reason,
)
from facade.dependencies import resolve_model
from facade.generation import CallOptions, Generation
from facade.pipeline.run import ChoiceState, GenerationRun
from facade.protocol import ChatCompletionRequest, FunctionCall
from facade.settings import FacadeSettings
from facade.sse import cancel_on_disconnect
from tandem.v1 import inference_pb2 as pb
from tandem.v1.inference_pb2_grpc import InferenceStub


@dataclass(kw_only=True)
class ChatRun(GenerationRun):
    """One chat request in flight (one core call)."""

    request: ChatCompletionRequest

    def add(self, response: pb.GenerateResponse) -> None:
        self.usage.update(0, response)
        for choice in response.choices:
            self.state(choice.index).add(choice)

    def chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
        return self.sse_chunk(ChatCompletionChunk, choices, usage)


def chunk_choice(run: ChatRun, choice: pb.ChoiceDelta) -> ChatChunkChoice | None:
    """The chunk choice of one core delta; None when it carries nothing for the client."""
    wants_logprobs = bool(run.request.logprobs)
    reason = finish_reason(choice)
    if not (choice.text or choice.tool_calls or choice.reasoning_text or reason is not None
            or (wants_logprobs and choice.logprobs)):
        return None
    reasoning = choice.reasoning_text or None
    return ChatChunkChoice(
        index=choice.index,
        delta=DeltaMessage(content=choice.text or None,
                           tool_calls=_delta_tool_calls(choice, run.state(choice.index))
                           or None,
                           reasoning_content=reasoning, reasoning=reasoning),
        logprobs=chat_logprobs(choice.logprobs) if wants_logprobs else None,
        finish_reason=reason,
        stop_reason=stop_reason(choice),
    )


def _delta_tool_calls(choice: pb.ChoiceDelta, state: ChoiceState) -> list[DeltaToolCall]:
    """The core's tool-call deltas in OpenAI's streaming shape (id, type and name on a call's
    first delta only; a custom tool's call under `custom`, its input in pieces). `state` has
    recorded the delta already: it knows the type of each call."""
    calls = []
    for call in choice.tool_calls:
        kind = (call.type or "function") if call.id else None
        if state.tool_calls[call.index][3] == "custom":
            calls.append(DeltaToolCall(index=call.index, id=call.id or None, type=kind,
                                       custom=DeltaCustom(name=call.function.name or None,
                                                          input=call.function.arguments)))
        else:
            calls.append(DeltaToolCall(index=call.index, id=call.id or None, type=kind,
                                       function=DeltaFunction(name=call.function.name or None,
                                                              arguments=call.function.arguments)))
    return calls


def _message(state: ChoiceState) -> AssistantMessage:
    """A finished choice's message: its calls, and content null when it is only calls."""
    calls = [ResponseCustomToolCall(id=call_id, custom=CustomToolCallBody(name=name,
                                                                          input=arguments))
             if kind == "custom" else
             ResponseToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
             for call_id, name, arguments, kind in map(state.tool_calls.get,
                                                       sorted(state.tool_calls))]
    reasoning = state.reasoning
    if not calls:
        return AssistantMessage(content=state.text, reasoning_content=reasoning,
                                reasoning=reasoning)
    return AssistantMessage(content=state.text or None, tool_calls=calls,
                            reasoning_content=reasoning, reasoning=reasoning)


async def stream_chat(run: ChatRun, generation: Generation) -> AsyncIterator[bytes]:
    """The SSE events: a role chunk per choice, the deltas, the optional usage chunk.

    With `continuous_usage_stats` every chunk carries the usage so far (the role chunks: the
    prompt's tokens, read from the core's first response)."""
    continuous = run.request.continuous_usage
    for call_index, first in enumerate(generation.first_responses):
        if first is not None:
            run.usage.update(call_index, first)
    for index in range(run.num_choices):
        delta = DeltaMessage(role="assistant", content="")
        usage = run.usage.prompt_only() if continuous else None
        yield run.chunk([ChatChunkChoice(index=index, delta=delta)], usage)
    async with aclosing(generation.responses()) as responses:
        async for _, response in responses:
            run.add(response)
            choices = [c for delta in response.choices if (c := chunk_choice(run, delta))]
            if choices:
                yield run.chunk(choices, run.usage.total() if continuous else None)
    run.check_finished()
    if run.request.include_usage:
        yield run.chunk([], run.usage.total())


def _completion(run: ChatRun) -> ChatCompletion:
    choices = []
    for index in range(run.num_choices):
        state = run.choices[index]
        choices.append(ChatChoice(
            index=index,
            message=_message(state),
            logprobs=chat_logprobs(state.logprobs) if run.request.logprobs else None,
            finish_reason=state.finish_reason,
            stop_reason=state.stop_reason,
        ))  # fmt: skip
    num_top = run.request.prompt_logprobs
    return ChatCompletion(
        id=run.completion_id,
        created=run.created,
        model=run.model,
        choices=choices,
        usage=run.usage.total(),
        prompt_logprobs=prompt_logprobs_json(run.choices[0].prompt_logprobs, num_top)
        if num_top is not None else None,
    )


async def complete_chat(run: ChatRun, generation: Generation) -> ChatCompletion:
    """Read the whole answer (every core response) and build the chat completion."""
    async with aclosing(generation.responses()) as responses:
        async for _, response in responses:
            run.add(response)
    run.check_finished()
    return _completion(run)


async def open_chat(
    body: ChatCompletionRequest,
    request: Request,
    stub: InferenceStub,
    options: CallOptions,
    settings: FacadeSettings,
) -> tuple[ChatRun, Generation]:
    """Send a (checked) chat request to the core and await admission: the run and its calls.
    /v1/responses serves its requests through here too."""
    model = resolve_model(body.model, settings)
    generate = chat_to_generate(body, model)
    generation = await cancel_on_disconnect(request, Generation.open(stub, [generate], options))
    run = ChatRun(
        request=body,
        completion_id=f"chatcmpl-{options.request_id}",
        created=int(time.time()),
        model=generation.model or model,
    )
    return run, generation
