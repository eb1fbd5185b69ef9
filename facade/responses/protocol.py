"""Request and response shapes of the Responses API (POST /v1/responses), pydantic v2.

`ResponsesRequest` accepts OpenAI's fields (and, like the other routes, vLLM's sampling extras
such as `seed` and `top_k`, with the same ranges, because it extends `SamplingFields`); unknown
fields are kept and reported as ignored. Input items are messages (string content or
`input_text` / `output_text` parts), `function_call` / `custom_tool_call` items and their
outputs; tools are function tools and custom tools (free-form input, optionally a Lark or regex
grammar). The response side mirrors OpenAI's JSON: `ResponseObject` with `message`,
`function_call` and `custom_tool_call` output items, `ResponseUsage`, and `ResponseStreamEvent`
(the shape every streamed event shares, for /openapi.json).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from facade.bodies import ResponseModel
from facade.errors import unsupported
from facade.protocol import MAX_UINT32, CustomFormat, RequestModel, SamplingFields

# ---------------------------------------------------------------------------------------------
# Request


class InputContent(RequestModel):
    """One part of an input message: text (`input_text`, or `output_text` of an assistant
    message sent back), or an image / file (passed on; the core refuses what it cannot read)."""

    type: Literal["input_text", "output_text", "text", "refusal", "input_image", "input_file"]
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class InputMessage(RequestModel):
    type: Literal["message"] = "message"
    id: str | None = None  # replayed output messages carry theirs; optional
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContent]


class FunctionCallInput(RequestModel):
    """A tool call the model made earlier, sent back as input."""

    type: Literal["function_call"]
    id: str | None = None  # "fc_…" when replayed from an output; optional
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    call_id: str
    name: str
    arguments: str = ""


class FunctionCallOutputInput(RequestModel):
    """The result of a tool call, for the model to read."""

    type: Literal["function_call_output"]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    call_id: str
    output: str | list[InputContent]


class CustomToolCallInput(RequestModel):
    """A custom tool's call the model made earlier, sent back as input."""

    type: Literal["custom_tool_call"]
    id: str | None = None  # "ctc_…" when replayed from an output; optional
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    call_id: str
    name: str
    input: str = ""


class CustomToolCallOutputInput(RequestModel):
    """The result of a custom tool's call, for the model to read."""

    type: Literal["custom_tool_call_output"]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    call_id: str
    output: str | list[InputContent]


class ReasoningInput(RequestModel):
    """A reasoning item of an earlier output, replayed (Codex sends them back): accepted and
    left out of the prompt (the chat templates Tandem serves drop earlier reasoning too)."""

    type: Literal["reasoning"]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type") or "message")
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallInput, Tag("function_call")]
    | Annotated[FunctionCallOutputInput, Tag("function_call_output")]
    | Annotated[CustomToolCallInput, Tag("custom_tool_call")]
    | Annotated[CustomToolCallOutputInput, Tag("custom_tool_call_output")]
    | Annotated[ReasoningInput, Tag("reasoning")],
    Discriminator(_item_kind),
]

# Input item types of OpenAI's spec that Tandem does not take: refused with
# `unsupported_parameter` naming `input[i].type` (built-in tools' calls and their outputs, item
# references to OpenAI-side storage).
UNSUPPORTED_INPUT_TYPES: frozenset[str] = frozenset({
    "item_reference", "file_search_call", "computer_call", "computer_call_output",
    "web_search_call", "image_generation_call", "code_interpreter_call", "local_shell_call",
    "local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
    "apply_patch_call_output", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response",
    "mcp_call", "compaction",
})  # fmt: skip
# Tool types of the spec that Tandem does not run (OpenAI's hosted tools): refused with
# `unsupported_parameter` naming `tools[i].type`.
UNSUPPORTED_TOOL_TYPES: frozenset[str] = frozenset({
    "file_search", "web_search", "web_search_preview", "web_search_preview_2025_03_11",
    "web_search_2025_08_26", "computer_use_preview", "computer_use", "mcp", "code_interpreter",
    "image_generation", "local_shell", "shell", "apply_patch",
})  # fmt: skip


def refuse_unsupported(data: Any) -> None:
    """Spec-valid input items, tools and tool choices that Tandem does not do: a 400
    `unsupported_parameter` naming the exact place (`input[3].type`, `tools[0].type`)."""
    if not isinstance(data, dict):
        return
    items = data.get("input")
    for index, item in enumerate(items if isinstance(items, list) else []):
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in UNSUPPORTED_INPUT_TYPES:
            raise unsupported(f"input[{index}].type",
                              f"Input items of type '{kind}' are not supported by this server.")
    tools = data.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in UNSUPPORTED_TOOL_TYPES:
            raise unsupported(f"tools[{index}].type",
                              f"Tools of type '{kind}' are not supported by this server.")
    choice = data.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in UNSUPPORTED_TOOL_TYPES:
        raise unsupported("tool_choice.type",
                          f"tool_choice of type '{kind}' is not supported by this server.")


class FunctionTool(RequestModel):
    """A function tool (Responses' flat shape: name and parameters at the top)."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class CustomTool(RequestModel):
    """A custom tool: the model calls it with free-form text (`format`: free text, or a Lark or
    regex grammar that the input must match)."""

    type: Literal["custom"]
    name: str
    description: str | None = None
    format: CustomFormat | None = None


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "custom" if kind == "custom" else "function"


AnyTool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[CustomTool, Tag("custom")],
    Discriminator(_tool_kind),
]


class NamedFunctionChoice(RequestModel):
    type: Literal["function", "custom"]  # a function or a custom tool, by name
    name: str


class AllowedFunction(RequestModel):
    type: Literal["function", "custom"]
    name: str


class AllowedToolsChoice(RequestModel):
    """`{"type": "allowed_tools", "mode", "tools"}`: every tool stays in the prompt, the model may
    call only these."""

    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[AllowedFunction] = Field(min_length=1)


class TextFormat(RequestModel):
    """`text.format`: plain text, any JSON object, or JSON matching `schema`."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(RequestModel):
    format: TextFormat | None = None


class ResponsesRequest(SamplingFields):
    """POST /v1/responses."""

    input: str | list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_UINT32)
    tools: list[AnyTool] | None = None
    tool_choice: (Literal["none", "auto", "required"] | NamedFunctionChoice
                  | AllowedToolsChoice | None) = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    store: bool = True  # OpenAI's default
    previous_response_id: str | None = None
    truncation: Literal["auto", "disabled"] | None = None  # "auto" is refused
    reasoning: dict[str, Any] | None = None  # accepted and ignored
    # vLLM's extension, as on chat: the think block's token budget (reasoning models only)
    thinking_token_budget: int | None = Field(default=None, ge=0, le=MAX_UINT32)
    background: bool | None = None  # refused unless false (the field policy)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        refuse_unsupported(data)  # raises the ApiError itself: pydantic lets it through
        return data

    @property
    def text_format(self) -> TextFormat | None:
        return self.text.format if self.text is not None else None


# ---------------------------------------------------------------------------------------------
# Response


class OutputText(ResponseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(ResponseModel):
    id: str  # "msg_…"
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class FunctionCallOutput(ResponseModel):
    id: str  # "fc_…"
    type: Literal["function_call"] = "function_call"
    call_id: str  # what a `function_call_output` item answers
    name: str
    arguments: str  # JSON, as the model produced it
    status: Literal["in_progress", "completed", "incomplete"]


class CustomToolCallOutput(ResponseModel):
    id: str  # "ctc_…"
    type: Literal["custom_tool_call"] = "custom_tool_call"
    call_id: str  # what a `custom_tool_call_output` item answers
    name: str
    input: str  # the free-form input the model wrote
    status: Literal["in_progress", "completed", "incomplete"]


class ReasoningText(ResponseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningOutput(ResponseModel):
    """A reasoning model's think block: its text as one `reasoning_text` part (no summary)."""

    id: str  # "rs_…"
    type: Literal["reasoning"] = "reasoning"
    summary: list[dict[str, Any]] = Field(default_factory=list)  # Tandem writes no summaries
    content: list[ReasoningText]
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = ReasoningOutput | OutputMessage | FunctionCallOutput | CustomToolCallOutput


class InputTokensDetails(ResponseModel):
    cached_tokens: int = 0  # input tokens served from the core's prefix cache
    cache_write_tokens: int = 0  # OpenAI's field; Tandem bills no cache writes


class OutputTokensDetails(ResponseModel):
    reasoning_tokens: int = 0


class ResponseUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(ResponseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(ResponseModel):
    code: str
    message: str


class ResponseObject(ResponseModel):
    """What POST /v1/responses returns (and GET /v1/responses/{id} reads back)."""

    id: str  # "resp_…"
    object: Literal["response"] = "response"
    created_at: int  # unix seconds
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    truncation: Literal["disabled"] = "disabled"
    metadata: dict[str, str] = Field(default_factory=dict)
    store: bool = True
    user: str | None = None  # left out when unset (the document types it without null)
    background: bool = False
    usage: ResponseUsage | None = None  # left out until the response is done
    omit_when_none = ("user", "usage")


class InputItemList(ResponseModel):
    """GET /v1/responses/{id}/input_items: a page of a stored response's input items."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]  # items as given, each with an `id` and a `status`
    has_more: bool
    first_id: str
    last_id: str


class InputTokens(ResponseModel):
    """POST /v1/responses/input_tokens."""

    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


class DeletedResponse(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class ResponseStreamEvent(ResponseModel):
    """Every streamed event: its `type` (also the SSE `event:` name), a `sequence_number` that
    increases by one per event, and the fields of that type (OpenAI's event reference)."""

    type: str  # e.g. "response.output_text.delta", or "error"
    sequence_number: int
