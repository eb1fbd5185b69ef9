"""Anthropic Messages ⇄ chat: a Messages request becomes the internal chat completion request,
and what the chat pipeline produced becomes Anthropic content blocks.

One path, as facade/responses/translate.py does it for the Responses API: `to_chat_request`
builds a `ChatCompletionRequest` (validated by the chat route's own model, so its validators
apply) that the chat pipeline (facade/pipeline/chat.py) sends to the core. `system` becomes the
system message; text and image blocks become chat content parts; `tool_use` blocks the
assistant's `tool_calls`; each `tool_result` block a `tool` message; `thinking` blocks the
assistant's `reasoning_content`. `tool_choice` any → "required", tool → a named function;
`thinking.budget_tokens` → `thinking_token_budget`. Errors name Anthropic's parameters
(`anthropic_params`). The other way, `BlockAssembler` turns reasoning, text and tool-call deltas
into content blocks and the streaming events that build them; the non-streaming path feeds it
the whole answer at once, so both paths produce the same blocks.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from facade.anthropic.protocol import (
    ContentBlock,
    CountTokensRequest,
    ImageBlockParam,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlockParam,
    TextBlock,
    TextBlockParam,
    ThinkingBlock,
    ThinkingBlockParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
)
from facade.errors import ApiError, api_error_from_validation, unsupported
from facade.protocol import ChatCompletionRequest

logger = logging.getLogger(__name__)

# Chat parameter (prefix) → the Messages parameter a client sent it as.
ANTHROPIC_PARAMS: dict[str, str] = {
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
    "thinking_token_budget": "thinking.budget_tokens",
    "parallel_tool_calls": "tool_choice.disable_parallel_tool_use",
}


def new_id(prefix: str) -> str:
    """A fresh object id: "msg_…"."""
    return f"{prefix}_{uuid.uuid4().hex}"


# Words of the core's messages that name chat things, as a Messages client knows them.
_RENAMED_WORDS = {"thinking_token_budget": "thinking.budget_tokens",
                  "image_url content is": "image blocks are"}  # fmt: skip
_CHAT_MESSAGE = re.compile(r"messages\[(\d+)\]")


def anthropic_param(param: str | None, origins: list[str] | None = None) -> str | None:
    """A chat parameter name as the Messages request calls it; `origins` names, per chat
    message, the request part it came from (the system prompt, `messages[i]`)."""
    if param is None:
        return None
    for chat_name, name in ANTHROPIC_PARAMS.items():
        if param == chat_name or param.startswith((f"{chat_name}[", f"{chat_name}.")):
            return name
    if param.startswith("tools[") and ".function." in param:
        return param.replace(".function.parameters", ".input_schema").replace(".function.", ".")
    return _rename_messages(param, origins)


def _rename_messages(text: str, origins: list[str] | None) -> str:
    if not origins:
        return text

    def origin(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return origins[index] if index < len(origins) else match.group(0)

    return _CHAT_MESSAGE.sub(origin, text)


@contextmanager
def anthropic_params(origins: list[str] | None = None) -> Iterator[None]:
    """Errors raised inside name the Messages parameter instead of the chat one."""
    try:
        yield
    except ApiError as error:
        renamed = anthropic_param(error.param, origins)
        message = error.message
        if renamed != error.param and message and error.param:
            message = message.replace(f"'{error.param}'", f"'{renamed}'")
        for word, name in _RENAMED_WORDS.items():
            message = message.replace(word, name)
        error.message = _rename_messages(message, origins)
        error.param = renamed
        raise


# ---------------------------------------------------------------------------------------------
# Request → chat


def system_text(system: str | list[TextBlockParam] | None) -> str | None:
    """`system` as one string (blocks joined by newlines, as Anthropic concatenates them)."""
    if system is None or isinstance(system, str):
        return system or None
    return "\n".join(block.text for block in system) or None


def _parts(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    """Text and image blocks as chat content parts (images go to the core, which refuses them
    on a text-only model)."""
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        if isinstance(block, TextBlockParam):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlockParam):
            parts.append({"type": "image_url", "image_url": {"url": block.url}})
        else:
            raise unsupported(f"{where}[{index}]",
                              f"A '{block.type}' block is not allowed here ({where}).")
    return parts


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def _user_messages(message: MessageParam, where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages (in order), then the rest as one user
    message."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    messages: list[dict[str, Any]] = []
    rest: list[Any] = []
    for index, block in enumerate(message.content):
        if isinstance(block, ToolResultBlockParam):
            content = block.content if block.content is not None else ""
            if not isinstance(content, str):
                content = _content(_parts(content, f"{where}.content[{index}].content"))
            messages.append({"role": "tool", "tool_call_id": block.tool_use_id,
                             "content": content})  # fmt: skip
        elif isinstance(block, (TextBlockParam, ImageBlockParam)):
            rest.append(block)
        else:
            raise unsupported(f"{where}.content[{index}]",
                              f"A '{block.type}' block is not allowed in a user message.")
    if rest:
        messages.append({"role": "user", "content": _content(_parts(rest, f"{where}.content"))})
    return messages


def _assistant_message(message: MessageParam, where: str) -> dict[str, Any]:
    """An assistant turn: text, `tool_use` blocks as tool calls, `thinking` as the reasoning
    (redacted thinking cannot be read back and is left out)."""
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(message.content):
        if isinstance(block, TextBlockParam):
            text.append(block.text)
        elif isinstance(block, ThinkingBlockParam):
            reasoning.append(block.thinking)
        elif isinstance(block, ToolUseBlockParam):
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input)}})
        elif not isinstance(block, RedactedThinkingBlockParam):
            raise unsupported(f"{where}.content[{index}]",
                              f"A '{block.type}' block is not allowed in an assistant message.")
    chat: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls
                            else None}  # fmt: skip
    if calls:
        chat["tool_calls"] = calls
    if reasoning:
        chat["reasoning_content"] = "".join(reasoning)
    return chat


def chat_messages(request: CountTokensRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The request's system prompt and messages as chat messages, and for each the request
    part it came from ("system", "messages[i]")."""
    messages: list[dict[str, Any]] = []
    origins: list[str] = []
    system = system_text(request.system)
    if system is not None:
        messages.append({"role": "system", "content": system})
        origins.append("system")
    for index, message in enumerate(request.messages):
        where = f"messages[{index}]"
        turn = (_user_messages(message, where) if message.role == "user"
                else [_assistant_message(message, where)])  # fmt: skip
        messages += turn
        origins += [where] * len(turn)
    return messages, origins


def _tools(request: CountTokensRequest) -> dict[str, Any]:
    """tools / tool_choice in the chat request's shape."""
    fields: dict[str, Any] = {}
    if request.tools:
        for index, tool in enumerate(request.tools):
            if tool.type not in (None, "custom"):
                raise unsupported(f"tools[{index}].type",
                                  f"Tool type '{tool.type}' (a server tool) is not supported; "
                                  "only client tools (with an input_schema) are.")
        fields["tools"] = [
            {"type": "function",
             "function": {"name": tool.name, "parameters": tool.input_schema,
                          **({"description": tool.description} if tool.description else {})}}
            for tool in request.tools
        ]  # fmt: skip
    choice = request.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise ApiError(400, "tool_choice of type 'tool' needs a 'name'.",
                               param="tool_choice.name", code="missing_required_parameter")
            fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use is not None and request.tools:
            fields["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return fields


def _thinking(request: CountTokensRequest) -> dict[str, Any]:
    thinking = request.thinking
    if thinking is None or thinking.type == "adaptive":
        return {}
    if thinking.type == "disabled":  # Qwen3's switch; templates without it ignore it
        return {"chat_template_kwargs": {"enable_thinking": False}}
    if thinking.budget_tokens is None:
        raise ApiError(400, "thinking of type 'enabled' needs 'budget_tokens'.",
                       param="thinking.budget_tokens", code="missing_required_parameter")
    return {"thinking_token_budget": thinking.budget_tokens}


def to_chat_request(request: CountTokensRequest) -> tuple[ChatCompletionRequest, list[str]]:
    """The chat request that serves (or, for count_tokens, would serve) `request`, and the
    origins of its messages (for `anthropic_params`)."""
    messages, origins = chat_messages(request)
    fields: dict[str, Any] = {"messages": messages, **_tools(request), **_thinking(request)}
    if request.model:
        fields["model"] = request.model
    if isinstance(request, MessagesRequest):
        fields["max_completion_tokens"] = request.max_tokens
        for name in ("temperature", "top_p", "top_k"):
            if getattr(request, name) is not None:
                fields[name] = getattr(request, name)
        if request.stop_sequences:
            fields["stop"] = request.stop_sequences
    try:
        return ChatCompletionRequest.model_validate(fields), origins
    except ValidationError as error:
        with anthropic_params(origins):
            raise api_error_from_validation(list(error.errors())) from None


# ---------------------------------------------------------------------------------------------
# Chat output → content blocks (and streaming events)


def stop_reason(
    finish_reason: str | None, stop: str | int | None, request: MessagesRequest
) -> tuple[str, str | None]:
    """Chat's finish reason (and vLLM's stop reason) as Anthropic's (stop_reason,
    stop_sequence)."""
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "tool_calls":
        return "tool_use", None
    if isinstance(stop, str) and stop in (request.stop_sequences or []):
        return "stop_sequence", stop
    return "end_turn", None


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        logger.warning("tool call arguments are not a JSON object: %.200r", arguments)
        return {}
    return value


class BlockAssembler:
    """Builds the content blocks of one message from reasoning, text and tool-call deltas, and
    returns for each delta the streaming events that build them (`content_block_start`,
    `content_block_delta`, `content_block_stop`). Tool calls' `input` is parsed from the JSON
    arguments once the block closes."""

    def __init__(self, show_thinking: bool = True) -> None:
        self.blocks: list[ContentBlock] = []
        self.show_thinking = show_thinking  # False: thinking was disabled by the request
        self._open: ContentBlock | None = None
        self._arguments: dict[int, str] = {}  # block index → JSON arguments so far
        self._calls: dict[int, int] = {}  # chat tool-call index → block index

    def _start(self, block: ContentBlock) -> list[dict[str, Any]]:
        events = self.close()
        self.blocks.append(block)
        self._open = block
        start = block.model_dump(mode="json")
        if isinstance(block, ToolUseBlock):
            start["input"] = {}
        return events + [{"type": "content_block_start", "index": len(self.blocks) - 1,
                          "content_block": start}]  # fmt: skip

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}

    def thinking(self, delta: str) -> list[dict[str, Any]]:
        if not delta or not self.show_thinking:
            return []
        events = [] if isinstance(self._open, ThinkingBlock) else self._start(ThinkingBlock())
        assert isinstance(self._open, ThinkingBlock)
        self._open.thinking += delta
        return events + [self._delta({"type": "thinking_delta", "thinking": delta})]

    def text(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        events = [] if isinstance(self._open, TextBlock) else self._start(TextBlock())
        assert isinstance(self._open, TextBlock)
        self._open.text += delta
        return events + [self._delta({"type": "text_delta", "text": delta})]

    def tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str | None
    ) -> list[dict[str, Any]]:
        """One delta of chat tool call `index`: its first one names it, later ones add
        argument fragments."""
        events: list[dict[str, Any]] = []
        if index not in self._calls:
            events = self._start(ToolUseBlock(id=call_id or new_id("toolu"), name=name or ""))
            self._calls[index] = len(self.blocks) - 1
            self._arguments[len(self.blocks) - 1] = ""
        block_index = self._calls[index]
        if arguments:
            self._arguments[block_index] += arguments
            events.append({"type": "content_block_delta", "index": block_index,
                           "delta": {"type": "input_json_delta", "partial_json": arguments}})
        return events

    def close(self) -> list[dict[str, Any]]:
        """Finish the open block (if any): its `content_block_stop`."""
        block, self._open = self._open, None
        if block is None:
            return []
        index = self.blocks.index(block)
        if isinstance(block, ToolUseBlock):
            block.input = _tool_input(self._arguments[index])
        return [{"type": "content_block_stop", "index": index}]
