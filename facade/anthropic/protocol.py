"""Anthropic Messages API shapes (pydantic v2): POST /v1/messages and /v1/messages/count_tokens.

Requests keep unknown fields (`extra="allow"`, as the OpenAI models do: Claude Code and newer
SDKs send fields this server does not act on, e.g. `context_management`); known fields are
checked with Anthropic's ranges (`temperature` in [0, 1]) so that a bad value is a 400 naming
its parameter. Content blocks are told apart by `type`; a block type this server has no use for
(documents, server tools, …) fails validation with that type named. Responses mirror
Anthropic's JSON; the facade fills them from what the chat pipeline produced.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from facade.bodies import ResponseModel
from facade.protocol import MAX_INT32, MAX_UINT32, RequestModel

# ---------------------------------------------------------------------------------------------
# Request content blocks


class TextBlockParam(RequestModel):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # accepted, not acted on (prefix caching is
    # automatic in the core)


class ImageSource(RequestModel):
    type: Literal["base64", "url"]
    media_type: str | None = None  # base64: "image/png", ...
    data: str | None = None  # base64: the bytes
    url: str | None = None  # url: where the image is


class ImageBlockParam(RequestModel):
    type: Literal["image"]
    source: ImageSource
    cache_control: dict[str, Any] | None = None

    @property
    def url(self) -> str:
        """The image as chat's `image_url.url` (base64 sources become a data URL)."""
        if self.source.type == "url":
            return self.source.url or ""
        return f"data:{self.source.media_type or 'image/png'};base64,{self.source.data or ''}"


class ToolUseBlockParam(RequestModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    cache_control: dict[str, Any] | None = None


class ToolResultBlockParam(RequestModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlockParam | ImageBlockParam,
                                  Field(discriminator="type")]] | None = None  # fmt: skip
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


class ThinkingBlockParam(RequestModel):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None  # what this server sent (""); not checked


class RedactedThinkingBlockParam(RequestModel):
    type: Literal["redacted_thinking"]
    data: str


ContentBlockParam = Annotated[
    TextBlockParam | ImageBlockParam | ToolUseBlockParam | ToolResultBlockParam
    | ThinkingBlockParam | RedactedThinkingBlockParam,
    Field(discriminator="type"),
]


def _content_kind(value: Any) -> str:
    return "text-content" if isinstance(value, str) else "block-list"


# A message's content: a string or a list of blocks (one branch is tried, so that an unknown
# block type is the error, not "should be a valid string").
MessageContent = Annotated[
    Annotated[str, Tag("text-content")] | Annotated[list[ContentBlockParam], Tag("block-list")],
    Discriminator(_content_kind),
]


class MessageParam(RequestModel):
    role: Literal["user", "assistant"]
    content: MessageContent


# ---------------------------------------------------------------------------------------------
# Tools, thinking, metadata


class ToolParam(RequestModel):
    """A client tool (`type` absent or "custom"); Anthropic's server tools (`web_search_…`,
    `bash_…`, …) have other types and are refused by the translation."""

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    type: str | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoiceParam(RequestModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # type "tool": the tool to call
    disable_parallel_tool_use: bool | None = None


class ThinkingParam(RequestModel):
    """"enabled" with a budget, "adaptive" (the model decides: the model's default), or
    "disabled"; `display: "omitted"` leaves the thinking blocks out of the answer."""

    type: Literal["enabled", "adaptive", "disabled"]
    budget_tokens: int | None = Field(default=None, ge=1, le=MAX_UINT32)  # "enabled": required
    display: Literal["summarized", "omitted"] | None = None

    @property
    def shown(self) -> bool:
        return self.type != "disabled" and self.display != "omitted"


class MetadataParam(RequestModel):
    user_id: str | None = None  # accepted, not acted on


# ---------------------------------------------------------------------------------------------
# Requests


class CountTokensRequest(RequestModel):
    """POST /v1/messages/count_tokens: what a message request's prompt would be."""

    model: str | None = None  # None/empty: the server's default model
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: int = Field(ge=1, le=MAX_UINT32)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=MAX_INT32)  # 0: off
    stream: bool = False
    metadata: MetadataParam | None = None
    service_tier: str | None = None  # accepted, not acted on


# ---------------------------------------------------------------------------------------------
# Responses


class TextBlock(ResponseModel):
    type: Literal["text"] = "text"
    text: str = ""


class ThinkingBlock(ResponseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str = ""
    # Anthropic's clients expect one; Tandem signs nothing: always "" (sent back, it is ignored)
    signature: str = ""


class ToolUseBlock(ResponseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


ContentBlock = TextBlock | ThinkingBlock | ToolUseBlock


class MessageUsage(ResponseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0  # Tandem's prefix cache has no paid writes
    cache_read_input_tokens: int = 0  # prompt tokens served from the core's prefix cache


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageObject(ResponseModel):
    id: str  # "msg_…"
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: MessageUsage


class CountTokensResponse(ResponseModel):
    input_tokens: int


class AnthropicErrorDetail(BaseModel):
    type: str = Field(description='Anthropic error type, e.g. "invalid_request_error".')
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error envelope `{"type": "error", "error": {"type", "message"}}`: the body
    of every error on /v1/messages and the data of a streamed `error` event."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
