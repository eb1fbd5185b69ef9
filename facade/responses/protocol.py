"""Request and response shapes of the Responses API (POST /v1/responses), pydantic v2.

`ResponsesRequest` accepts OpenAI's fields (and, like the other routes, vLLM's sampling extras
such as `seed` and `top_k`, with the same ranges, because it extends `SamplingFields`); unknown
fields are kept and reported as ignored. Input items are messages (string content or
`input_text` / `output_text` parts), `function_call` and `function_call_output` items; tools are
function tools. The response side mirrors OpenAI's JSON: `ResponseObject` with `message` and
`function_call` output items, `ResponseUsage`, and `ResponseStreamEvent` (the shape every
streamed event shares, for /openapi.json).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from facade.protocol import MAX_UINT32, RequestModel, ResponseModel, SamplingFields

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
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContent]


class FunctionCallInput(RequestModel):
    """A tool call the model made earlier, sent back as input."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = ""


class FunctionCallOutputInput(RequestModel):
    """The result of a tool call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputContent]


def _item_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type") or "message")
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallInput, Tag("function_call")]
    | Annotated[FunctionCallOutputInput, Tag("function_call_output")],
    Discriminator(_item_kind),
]


class FunctionTool(RequestModel):
    """A function tool (Responses' flat shape: name and parameters at the top)."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(RequestModel):
    type: Literal["function"]
    name: str


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
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    store: bool = True  # OpenAI's default
    previous_response_id: str | None = None
    truncation: Literal["auto", "disabled"] | None = None  # "auto" is refused
    reasoning: dict[str, Any] | None = None  # accepted and ignored

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


OutputItem = OutputMessage | FunctionCallOutput


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
    user: str | None = None
    background: bool = False
    usage: ResponseUsage | None = None


class DeletedResponse(ResponseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class ResponseStreamEvent(ResponseModel):
    """Every streamed event: its `type` (also the SSE `event:` name), a `sequence_number` that
    increases by one per event, and the fields of that type (OpenAI's event reference)."""

    type: str  # e.g. "response.output_text.delta", or "error"
    sequence_number: int
