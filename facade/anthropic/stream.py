"""The message object and the event stream of POST /v1/messages, built from a chat run.

`MessageRun` is one Messages request in flight around its `ChatRun` (facade/pipeline/chat.py,
whose `chunk_choice` picks what each core delta shows). `message_object` builds the final
object (non-streaming: from the chat completion, fed whole to the same `BlockAssembler`).
`message_events` streams Anthropic's sequence — `message_start`, `ping`, then per content block
`content_block_start`, `content_block_delta`… (`thinking_delta`, `text_delta`,
`input_json_delta`), `content_block_stop`, and last `message_delta` (stop_reason, stop_sequence
and the usage) and `message_stop` — each as `event: <type>` + `data: <json>`. An error after
the first event is Anthropic's `error` event, and the stream ends there.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from facade.anthropic.protocol import MessageObject, MessagesRequest, MessageUsage
from facade.anthropic.translate import BlockAssembler, stop_reason
from facade.bodies import ChatCompletion, Usage
from facade.errors import ApiError, anthropic_body
from facade.generation import Generation
from facade.pipeline import ChatRun, chunk_choice


@dataclass(kw_only=True)
class MessageRun:
    """One Messages request in flight: its identity, its chat run and its blocks so far."""

    request: MessagesRequest
    chat: ChatRun  # the chat run that serves it (facade/pipeline/chat.py)
    message_id: str  # "msg_…"
    assembler: BlockAssembler = field(default_factory=BlockAssembler)

    def snapshot(self, usage: Usage, reason: str | None = None,
                 sequence: str | None = None) -> dict[str, Any]:  # fmt: skip
        """The message object as it stands (JSON)."""
        message = MessageObject(
            id=self.message_id,
            model=self.chat.model,
            content=list(self.assembler.blocks),
            stop_reason=reason,  # type: ignore[arg-type]
            stop_sequence=sequence,
            usage=anthropic_usage(usage),
        )
        return message.model_dump(mode="json")

    def stop(self) -> tuple[str, str | None]:
        state = self.chat.state(0)
        return stop_reason(state.finish_reason, state.stop_reason, self.request)


def anthropic_usage(usage: Usage) -> MessageUsage:
    """Chat usage as Anthropic's: `input_tokens` excludes the cached prompt tokens (Anthropic
    counts those in `cache_read_input_tokens` only)."""
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details else 0
    return MessageUsage(input_tokens=usage.prompt_tokens - cached,
                        output_tokens=usage.completion_tokens,
                        cache_read_input_tokens=cached)  # fmt: skip


def event(payload: dict[str, Any]) -> bytes:
    """One SSE event, named by its type."""
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def error_event(error: ApiError) -> bytes:
    """After the stream started: Anthropic's `error` event (the stream ends after it)."""
    return event(anthropic_body(error))


def message_object(run: MessageRun, completion: ChatCompletion) -> dict[str, Any]:
    """The non-streaming answer: the whole chat message fed to the assembler at once."""
    message = completion.choices[0].message
    assembler = run.assembler
    assembler.thinking(message.reasoning_content or "")
    assembler.text(message.content or "")
    for index, call in enumerate(message.tool_calls or []):
        assembler.tool_call(index, call.id, call.function.name, call.function.arguments)
    assembler.close()
    return run.snapshot(completion.usage or Usage(), *run.stop())


async def message_events(run: MessageRun, generation: Generation) -> AsyncIterator[bytes]:
    """The streamed events of one message."""
    chat = run.chat
    for first in generation.first_responses[:1]:
        if first is not None:
            chat.usage.update(0, first)
    start = run.snapshot(chat.usage.prompt_only())
    yield event({"type": "message_start", "message": start})
    yield event({"type": "ping"})
    assembler = run.assembler
    async with aclosing(generation.responses()) as responses:
        async for _, core_response in responses:
            chat.add(core_response)
            for delta in core_response.choices:
                choice = chunk_choice(chat, delta)
                if choice is None:
                    continue
                events = assembler.thinking(choice.delta.reasoning_content or "")
                events += assembler.text(choice.delta.content or "")
                for call in choice.delta.tool_calls or []:
                    events += assembler.tool_call(call.index, call.id, call.function.name,
                                                  call.function.arguments)  # fmt: skip
                for payload in events:
                    yield event(payload)
    chat.check_finished()
    for payload in assembler.close():
        yield event(payload)
    reason, sequence = run.stop()
    usage = anthropic_usage(chat.usage.total()).model_dump(mode="json")
    yield event({"type": "message_delta",
                 "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage})
    yield event({"type": "message_stop"})
