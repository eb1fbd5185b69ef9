"""The response object and the event stream of POST /v1/responses, built from a chat run.

`ResponseRun` is one Responses request in flight around its `ChatRun` (facade/pipeline/chat.py,
whose `chunk_choice` picks what each core delta shows). `response_object` builds
the final object (non-streaming: from the chat completion). `response_events` streams OpenAI's
sequence — `response.created`, `response.in_progress`, per output item `output_item.added`,
`content_part.added`, `output_text.delta`…, `output_text.done`, `content_part.done`,
(for a reasoning item `reasoning_text.delta`… and `reasoning_text.done` instead),
`output_item.done` (for a tool call `function_call_arguments.delta`… and `.done` instead of the
text events; for a custom tool's call `custom_tool_call_input.delta`… and `.done`), then
`response.completed` or `response.incomplete` — each as `event: <type>` + `data: <json>` with
a `sequence_number` that grows by one per event. An error after the first event is OpenAI's
`error` event followed by `response.failed`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from facade.bodies import ChatChunkChoice, ChatCompletion
from facade.errors import ApiError
from facade.generation import Generation
from facade.pipeline import ChatRun, chunk_choice
from facade.responses.protocol import (
    IncompleteDetails,
    InputTokensDetails,
    ResponseError,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
)
from facade.responses.translate import OutputAssembler

# Chat finish reason → Responses status ("length": the max_output_tokens were reached).
_STATUS: dict[str | None, str] = {"stop": "completed", "tool_calls": "completed",
                                  "length": "incomplete"}  # fmt: skip


@dataclass(kw_only=True)
class ResponseRun:
    """One Responses request in flight: its identity, its chat run and its output so far."""

    request: ResponsesRequest
    chat: ChatRun  # the chat run that serves it (facade/pipeline/chat.py)
    response_id: str  # "resp_…"
    created_at: int  # unix seconds
    conversation: list[dict[str, Any]]  # chat messages up to this input (no instructions)
    assembler: OutputAssembler = field(default_factory=OutputAssembler)
    sequence_number: int = 0  # of the next streamed event

    def event(self, payload: dict[str, Any]) -> bytes:
        """One SSE event, numbered."""
        payload = {**payload, "sequence_number": self.sequence_number}
        self.sequence_number += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {payload['type']}\ndata: {data}\n\n".encode()

    def snapshot(self, status: str, **fields: Any) -> dict[str, Any]:
        """The response object as it stands (JSON)."""
        request = self.request
        text_format = request.text_format
        response = ResponseObject(
            id=self.response_id,
            created_at=self.created_at,
            status=status,  # type: ignore[arg-type]
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=self.chat.model,
            output=list(self.assembler.items),
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            temperature=request.temperature,
            top_p=request.top_p,
            tool_choice=_dumped(request.tool_choice) or "auto",
            tools=[tool.model_dump(mode="json", exclude_none=True) for tool in request.tools or []],
            text={"format": _dumped(text_format) or {"type": "text"}},
            metadata=request.metadata or {},
            store=request.store,
            user=request.user,
            **fields,
        )
        return response.model_dump(mode="json")

    def final(self) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        """Close the output: the final status, the response object (usage included) and the
        events that closed the last output item."""
        reason = self.chat.state(0).finish_reason
        status = _STATUS.get(reason, "failed")  # "abort": the core gave up on it
        closing = self.assembler.finish("incomplete" if status == "incomplete" else "completed")
        usage = self.chat.usage.total()
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        fields: dict[str, Any] = {
            "usage": ResponseUsage(
                input_tokens=usage.prompt_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=cached),
                output_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            )
        }
        if status == "incomplete":
            fields["incomplete_details"] = IncompleteDetails(reason="max_output_tokens")
        if status == "failed":
            fields["error"] = ResponseError(
                code="server_error", message=f"The core ended the response ({reason})."
            )
        return status, self.snapshot(status, **fields), closing

    def error_events(self, error: ApiError) -> bytes:
        """After the stream started: OpenAI's `error` event, then `response.failed`."""
        failed = self.snapshot(
            "failed", error=ResponseError(code=error.code or error.type, message=error.message)
        )
        return self.event({"type": "error", "code": error.code, "message": error.message,
                           "param": error.param}) + self.event(
            {"type": "response.failed", "response": failed})  # fmt: skip


def _dumped(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return value.model_dump(mode="json", exclude_none=True, by_alias=True)


def response_object(run: ResponseRun, completion: ChatCompletion) -> dict[str, Any]:
    """The non-streaming answer: the whole chat message fed to the assembler at once."""
    message = completion.choices[0].message
    run.assembler.reasoning(message.reasoning_content or "")
    run.assembler.text(message.content or "")
    for index, call in enumerate(message.tool_calls or []):
        if call.type == "custom":
            run.assembler.tool_call(index, call.id, call.custom.name, call.custom.input, True)
        else:
            run.assembler.tool_call(index, call.id, call.function.name, call.function.arguments)
    return run.final()[1]


def _delta_events(run: ResponseRun, choice: ChatChunkChoice) -> list[dict[str, Any]]:
    """The events one chat chunk choice adds: reasoning, text, then tool-call fragments."""
    events = run.assembler.reasoning(choice.delta.reasoning_content or "")
    events += run.assembler.text(choice.delta.content or "")
    for call in choice.delta.tool_calls or []:
        body = call.custom or call.function
        events += run.assembler.tool_call(
            call.index, call.id, body.name,
            call.custom.input if call.custom else call.function.arguments, call.custom is not None
        )
    return events


async def response_events(
    run: ResponseRun,
    generation: Generation,
    on_done: Callable[[dict[str, Any]], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The streamed events of one response; `on_done(response)` (the store) runs before the
    last event, so a stored response is readable once the client has seen it complete."""
    yield run.event({"type": "response.created", "response": run.snapshot("in_progress")})
    yield run.event({"type": "response.in_progress", "response": run.snapshot("in_progress")})
    async with aclosing(generation.responses()) as responses:
        async for _, core_response in responses:
            run.chat.add(core_response)
            for delta in core_response.choices:
                choice = chunk_choice(run.chat, delta)
                for event in _delta_events(run, choice) if choice else []:
                    yield run.event(event)
    run.chat.check_finished()
    status, response, closing = run.final()
    for event in closing:
        yield run.event(event)
    await on_done(response)
    kind = {"completed": "response.completed", "incomplete": "response.incomplete"}
    yield run.event({"type": kind.get(status, "response.failed"), "response": response})
