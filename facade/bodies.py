"""OpenAI response bodies of chat, completions and models (pydantic v2), as OpenAI's published
OpenAPI document describes them (tests/contract/test_openai_conformance.py checks every body and
stream event against it), plus vLLM's `stop_reason` and `prompt_logprobs`.

The facade only fills them from what the core returned and never counts tokens itself. A field
the document types as a string, array or object without null is left out when unset, never sent
as null; a field the document requires is always sent (null where it allows null).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from facade.protocol import FunctionCall


class ResponseModel(BaseModel):
    """A response body or part of one; the fields named in `omit_when_none` are left out of the
    JSON while unset (the document types them without null)."""

    model_config = ConfigDict(extra="allow")
    omit_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.omit_when_none:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class PromptTokensDetails(ResponseModel):
    cached_tokens: int = 0  # prompt tokens served from the core's prefix cache


class CompletionTokensDetails(ResponseModel):
    reasoning_tokens: int = 0  # completion tokens of the think block (markers included)


class Usage(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None  # reasoning models only
    omit_when_none = ("prompt_tokens_details", "completion_tokens_details")


class TopLogprob(ResponseModel):
    token: str  # the token's text as the core's tokenizer spells it
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(ResponseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None  # required by the document; Tandem never refuses


class ResponseToolCall(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CustomToolCallBody(ResponseModel):
    name: str
    input: str  # the free-form input the model wrote


class ResponseCustomToolCall(ResponseModel):
    """A call of a custom tool (`{"id", "type": "custom", "custom": {"name", "input"}}`)."""

    id: str
    type: Literal["custom"] = "custom"
    custom: CustomToolCallBody


REASONING_FIELDS = ("reasoning_content", "reasoning")  # vLLM's older and current names


class AssistantMessage(ResponseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None  # required by the document (null: Tandem never refuses)
    # parsed by the core; content then null
    tool_calls: list[ResponseToolCall | ResponseCustomToolCall] | None = None
    # a reasoning model's think block, under both names (left out for other models)
    reasoning_content: str | None = None
    reasoning: str | None = None
    omit_when_none = ("tool_calls", *REASONING_FIELDS)


class ChatChoice(ResponseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None  # "stop", "length", "tool_calls", "abort"
    stop_reason: str | int | None = None  # vLLM: the stop string or stop token id that ended it


class PromptLogprob(ResponseModel):
    """vLLM's prompt_logprobs entry of one token at one position."""

    logprob: float
    decoded_token: str


# vLLM's prompt_logprobs: per prompt position, token id (a string) → entry; the first is null
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class ChatCompletion(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int  # unix seconds
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None  # never set: Tandem has no fingerprint to give
    prompt_logprobs: PromptLogprobs | None = None  # only when asked for
    omit_when_none = ("usage", "system_fingerprint", "prompt_logprobs")


class _DropNone(ResponseModel):
    """A streamed piece whose unset (None) fields are left out of the JSON."""

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class DeltaFunction(_DropNone):
    name: str | None = None  # on the call's first delta
    arguments: str | None = None  # a fragment of the JSON arguments


class DeltaCustom(_DropNone):
    name: str | None = None  # on the call's first delta
    input: str | None = None  # a fragment of the free-form input


class DeltaToolCall(_DropNone):
    index: int  # the call's position in the choice
    id: str | None = None  # "call_...": first delta only
    type: Literal["function", "custom"] | None = None  # first delta only
    function: DeltaFunction | None = None  # a function's call
    custom: DeltaCustom | None = None  # a custom tool's call


class DeltaMessage(ResponseModel):
    """What one chunk adds to a choice; unset (None) fields are left out of the JSON."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    reasoning_content: str | None = None  # a reasoning model's think block, both names
    reasoning: str | None = None

    @model_serializer(mode="wrap")
    def _drop_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatChunkChoice(ResponseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(ResponseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)  # character offset of each token's chunk


class CompletionChoice(ResponseModel):
    index: int  # prompt_index * n + choice_index
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: PromptLogprobs | None = None  # only when asked for
    omit_when_none = ("prompt_logprobs",)


class Completion(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None  # never set: Tandem has no fingerprint to give
    omit_when_none = ("usage", "system_fingerprint")  # usage: on the last chunk of a stream only


class CompletionChunk(Completion):
    """Streaming chunks of /v1/completions share the object name "text_completion"."""


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    description: str = ""  # the core's note, e.g. that this is the demo model
    is_demo: bool = False  # the built-in demo model with random weights
    max_model_len: int | None = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
