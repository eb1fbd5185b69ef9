"""Responses API ⇄ chat: a Responses request becomes the internal chat completion request, and
what the chat pipeline produced becomes Responses output items.

One path, as SGLang's gRPC router does it: `to_chat_request` builds a `ChatCompletionRequest`
(validated by the chat route's own model, so its validators apply) that the chat pipeline
(facade/pipeline/chat.py) sends to the core — sampling, tools, `tool_choice`, structured output
(`text.format` → `response_format`) and limits are the chat route's. Errors name Responses'
parameters (`RESPONSES_PARAMS`). The other way, `OutputAssembler` turns text and tool-call deltas
into output items and the streaming events that build them; the non-streaming path feeds it the
whole answer at once, so both paths produce the same items.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from facade.errors import ApiError, api_error_from_validation, invalid_request
from facade.protocol import ChatCompletionRequest, SamplingFields
from facade.responses.protocol import (
    AllowedToolsChoice,
    CustomTool,
    CustomToolCallInput,
    CustomToolCallOutput,
    CustomToolCallOutputInput,
    FunctionCallInput,
    FunctionCallOutput,
    FunctionCallOutputInput,
    InputContent,
    InputMessage,
    OutputItem,
    OutputMessage,
    OutputText,
    ReasoningOutput,
    ReasoningText,
    ResponsesRequest,
)

# Chat parameter (prefix) → the Responses parameter a client sent it as.
RESPONSES_PARAMS: dict[str, str] = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
    "functions": "tools",
    "function_call": "tool_choice",
}


def new_id(prefix: str) -> str:
    """A fresh object id: "resp_…", "msg_…", "fc_…"."""
    return f"{prefix}_{uuid.uuid4().hex}"


def responses_param(param: str | None) -> str | None:
    """A chat parameter name as the Responses request calls it ("messages[2]" → "input")."""
    if param is None:
        return None
    for chat_name, name in RESPONSES_PARAMS.items():
        if param == chat_name or param.startswith((f"{chat_name}[", f"{chat_name}.")):
            return name
    for nested in (".function.", ".custom."):
        if param.startswith("tools[") and nested in param:
            return param.replace(nested, ".", 1)  # chat nests what Responses keeps flat
    return param


@contextmanager
def responses_params() -> Iterator[None]:
    """Errors raised inside name the Responses parameter instead of the chat one."""
    try:
        yield
    except ApiError as error:
        error.param = responses_param(error.param)
        if error.param is not None and error.message:
            error.message = _rename_in_message(error.message)
        raise


def _rename_in_message(message: str) -> str:
    for chat_name, name in RESPONSES_PARAMS.items():
        message = message.replace(f"'{chat_name}'", f"'{name}'")
    return message


# ---------------------------------------------------------------------------------------------
# Request → chat


def _text_of(content: str | list[InputContent]) -> str | list[dict[str, Any]]:
    """Input content as chat content: a string, or chat parts (text and image_url)."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        if part.type in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.text or ""})
        elif part.type == "refusal":
            parts.append({"type": "text", "text": part.refusal or ""})
        elif part.type == "input_image" and part.image_url:
            parts.append({"type": "image_url", "image_url": {"url": part.image_url}})
        else:  # a file, or an image by file id: nothing the core could read
            raise invalid_request(f"Input content of type '{part.type}' is not supported.",
                                  "input", code="unsupported_parameter")  # fmt: skip
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts


def input_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's `input` as chat messages (instructions not included). Consecutive
    `function_call` items join the assistant message before them, as one turn's tool calls."""
    if isinstance(request.input, str):
        return [{"role": "user", "content": request.input}]
    messages: list[dict[str, Any]] = []
    for item in request.input:
        if isinstance(item, InputMessage):
            messages.append({"role": item.role, "content": _text_of(item.content)})
        elif isinstance(item, (FunctionCallInput, CustomToolCallInput)):
            call = ({"id": item.call_id, "type": "function",
                     "function": {"name": item.name, "arguments": item.arguments}}
                    if isinstance(item, FunctionCallInput) else
                    {"id": item.call_id, "type": "custom",
                     "custom": {"name": item.name, "input": item.input}})  # fmt: skip
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": None}
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif isinstance(item, (FunctionCallOutputInput, CustomToolCallOutputInput)):
            output = _text_of(item.output)
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": output})
    return messages


_ITEM_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
                   "custom_tool_call": "ctc", "custom_tool_call_output": "ctco",
                   "reasoning": "rs"}  # fmt: skip


def input_item_resources(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's `input` as the item resources GET /v1/responses/{id}/input_items lists:
    each with an `id` (its own, else a new one) and a `status`; message text as parts."""
    if isinstance(request.input, str):
        items: list[Any] = [InputMessage(role="user", content=request.input)]
    else:
        items = list(request.input)
    resources = []
    for item in items:
        resource = item.model_dump(mode="json", exclude_none=True)
        resource["id"] = item.id or new_id(_ITEM_ID_PREFIX[item.type])
        resource.setdefault("status", "completed")
        if isinstance(item, InputMessage):
            resource["content"] = _message_parts(item)
        resources.append(resource)
    return resources


def _message_parts(message: InputMessage) -> list[dict[str, Any]]:
    """A message's content as parts: an assistant's as `output_text` (with the annotations and
    logprobs an output message's parts carry), anyone else's as `input_text`."""
    if message.role != "assistant":
        if isinstance(message.content, str):
            return [{"type": "input_text", "text": message.content}]
        return [part.model_dump(mode="json", exclude_none=True) for part in message.content]
    texts = [message.content] if isinstance(message.content, str) else [
        part.text or part.refusal or "" for part in message.content]
    return [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            for text in texts]


def output_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A response's output items as the one assistant chat message they were."""
    text = "".join(
        part.get("text", "")
        for item in output if item.get("type") == "message"
        for part in item.get("content", [])
    )  # fmt: skip
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             if item["type"] == "function_call" else
             {"id": item["call_id"], "type": "custom",
              "custom": {"name": item["name"], "input": item["input"]}}
             for item in output
             if item.get("type") in ("function_call", "custom_tool_call")]  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    reasoning = "".join(part.get("text", "") for item in output if item.get("type") == "reasoning"
                        for part in item.get("content") or [])  # fmt: skip
    if reasoning:
        message["reasoning_content"] = reasoning  # the template decides whether to show it
    return message


def _tools(request: ResponsesRequest) -> dict[str, Any]:
    """tools / tool_choice / parallel_tool_calls in the chat request's nested shape."""
    fields: dict[str, Any] = {}
    if not request.tools and request.tool_choice in ("auto", "none"):
        # `tools: []` (Codex with every tool off) is no tools, as OpenAI's Responses takes it
        return {"parallel_tool_calls": request.parallel_tool_calls} if (
            request.parallel_tool_calls is not None) else {}
    if request.tools:
        fields["tools"] = [
            {"type": "custom" if isinstance(tool, CustomTool) else "function",
             "custom" if isinstance(tool, CustomTool) else "function":
             tool.model_dump(exclude={"type"}, exclude_none=True, by_alias=True)}
            for tool in request.tools
        ]  # fmt: skip
    choice = request.tool_choice
    if choice is not None:
        if isinstance(choice, str):
            fields["tool_choice"] = choice
        elif isinstance(choice, AllowedToolsChoice):
            fields["tool_choice"] = {"type": "allowed_tools", "allowed_tools": {
                "mode": choice.mode,
                "tools": [{"type": tool.type, tool.type: {"name": tool.name}}
                          for tool in choice.tools]}}  # fmt: skip
        else:  # a function or a custom tool, by name (chat nests the name)
            fields["tool_choice"] = {"type": choice.type, choice.type: {"name": choice.name}}
    if request.parallel_tool_calls is not None:
        fields["parallel_tool_calls"] = request.parallel_tool_calls
    return fields


def _response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    """text.format as chat's response_format (json_schema's fields nest one level down)."""
    text_format = request.text_format
    if text_format is None:
        return None
    if text_format.type != "json_schema":
        return {"type": text_format.type}
    schema = text_format.model_dump(
        include={"name", "description", "json_schema", "strict"}, exclude_none=True, by_alias=True
    )
    return {"type": "json_schema", "json_schema": schema}


def to_chat_request(
    request: ResponsesRequest, history: list[dict[str, Any]]
) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """The chat request that serves `request`, after `history` (the stored conversation of its
    previous response), and the conversation without instructions (what a store keeps)."""
    conversation = history + input_messages(request)
    messages = list(conversation)
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    if not messages:
        raise invalid_request("'input' must not be empty.", "input")
    sampling = {  # the fields chat shares with Responses, as the client set them
        name: getattr(request, name)
        for name in request.model_fields_set & set(SamplingFields.model_fields)
    }
    fields: dict[str, Any] = {**sampling, "messages": messages, **_tools(request)}
    fields.pop("response_format", None)  # refused by the field policy unless null
    if request.max_output_tokens is not None:
        fields["max_completion_tokens"] = request.max_output_tokens
    if request.thinking_token_budget is not None:
        fields["thinking_token_budget"] = request.thinking_token_budget
    response_format = _response_format(request)
    if response_format is not None:
        fields["response_format"] = response_format
    try:
        chat = ChatCompletionRequest.model_validate(fields)
    except ValidationError as error:
        raise api_error_from_validation(list(error.errors())) from None
    return chat, conversation


# ---------------------------------------------------------------------------------------------
# Chat output → output items (and streaming events)


class OutputAssembler:
    """Builds the output items of one response from reasoning, text and tool-call deltas, and
    returns for each delta the streaming events (without sequence numbers) that build them. A
    reasoning model's think block is a `reasoning` item before the message or calls it led to
    (`response.reasoning_text.delta` / `.done` events, as a message's text has
    `output_text.*`)."""

    def __init__(self) -> None:
        self.items: list[OutputItem] = []
        self._open: OutputItem | None = None
        self._call_indexes: dict[int, int] = {}  # chat tool-call index → output index

    @property
    def output_index(self) -> int:
        return len(self.items) - 1

    def _item_event(self, kind: str, item: OutputItem) -> dict[str, Any]:
        return {"type": f"response.output_item.{kind}", "output_index": self.items.index(item),
                "item": item.model_dump(mode="json")}  # fmt: skip

    def _part_event(self, kind: str, message: OutputMessage | ReasoningOutput) -> dict[str, Any]:
        return {"type": f"response.content_part.{kind}", "item_id": message.id,
                "output_index": self.items.index(message), "content_index": 0,
                "part": message.content[0].model_dump(mode="json")}  # fmt: skip

    def _open_message(self) -> list[dict[str, Any]]:
        message = OutputMessage(id=new_id("msg"), status="in_progress", content=[])
        self.items.append(message)
        self._open = message
        added = self._item_event("added", message)
        message.content.append(OutputText(text=""))
        return [added, self._part_event("added", message)]

    def reasoning(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        events = []
        if not isinstance(self._open, ReasoningOutput):
            events = self.close()
            item = ReasoningOutput(id=new_id("rs"), status="in_progress", content=[])
            self.items.append(item)
            self._open = item
            events.append(self._item_event("added", item))
            item.content.append(ReasoningText(text=""))
            events.append(self._part_event("added", item))
        item = self._open
        assert isinstance(item, ReasoningOutput)
        item.content[0].text += delta
        events.append({"type": "response.reasoning_text.delta", "item_id": item.id,
                       "output_index": self.output_index, "content_index": 0,
                       "delta": delta})  # fmt: skip
        return events

    def text(self, delta: str) -> list[dict[str, Any]]:
        if not delta:
            return []
        events = []
        if not isinstance(self._open, OutputMessage):
            events = self.close() + self._open_message()
        message = self._open
        assert isinstance(message, OutputMessage)
        message.content[0].text += delta
        events.append({"type": "response.output_text.delta", "item_id": message.id,
                       "output_index": self.output_index, "content_index": 0, "delta": delta,
                       "logprobs": []})  # fmt: skip
        return events

    def tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str | None,
        custom: bool = False,
    ) -> list[dict[str, Any]]:
        """One delta of chat tool call `index`: its first one names it, later ones add
        argument fragments (`custom`: a custom tool's call, whose fragments are its input)."""
        events: list[dict[str, Any]] = []
        if index not in self._call_indexes:
            events += self.close()
            call_id = call_id or new_id("call")
            call: FunctionCallOutput | CustomToolCallOutput = (
                CustomToolCallOutput(id=new_id("ctc"), call_id=call_id, name=name or "",
                                     input="", status="in_progress") if custom else
                FunctionCallOutput(id=new_id("fc"), call_id=call_id, name=name or "",
                                   arguments="", status="in_progress"))  # fmt: skip
            self.items.append(call)
            self._open = call
            self._call_indexes[index] = self.output_index
            events.append(self._item_event("added", call))
        call = self.items[self._call_indexes[index]]
        assert isinstance(call, (FunctionCallOutput, CustomToolCallOutput))
        if arguments:
            if isinstance(call, CustomToolCallOutput):
                call.input += arguments
                kind = "response.custom_tool_call_input.delta"
            else:
                call.arguments += arguments
                kind = "response.function_call_arguments.delta"
            events.append({"type": kind, "item_id": call.id,
                           "output_index": self.items.index(call), "delta": arguments})  # fmt: skip
        return events

    def close(self, status: str = "completed") -> list[dict[str, Any]]:
        """Finish the open item (if any): its `.done` events."""
        item, self._open = self._open, None
        if item is None:
            return []
        item.status = status  # type: ignore[assignment]
        index = self.items.index(item)
        if isinstance(item, FunctionCallOutput):
            done = {"type": "response.function_call_arguments.done", "item_id": item.id,
                    "output_index": index, "name": item.name,
                    "arguments": item.arguments}  # fmt: skip
            return [done, self._item_event("done", item)]
        if isinstance(item, CustomToolCallOutput):
            done = {"type": "response.custom_tool_call_input.done", "item_id": item.id,
                    "output_index": index, "input": item.input}  # fmt: skip
            return [done, self._item_event("done", item)]
        if isinstance(item, ReasoningOutput):
            done = {"type": "response.reasoning_text.done", "item_id": item.id,
                    "output_index": index, "content_index": 0,
                    "text": item.content[0].text}  # fmt: skip
            return [done, self._part_event("done", item), self._item_event("done", item)]
        text_done = {"type": "response.output_text.done", "item_id": item.id,
                     "output_index": index, "content_index": 0, "text": item.content[0].text,
                     "logprobs": []}  # fmt: skip
        return [text_done, self._part_event("done", item), self._item_event("done", item)]

    def finish(self, status: str) -> list[dict[str, Any]]:
        """Close the last item; an answer without a message or call gets one (empty) message."""
        answered = any(not isinstance(item, ReasoningOutput) for item in self.items)
        events = (self.close() + self._open_message()) if not answered else []
        return events + self.close(status)
