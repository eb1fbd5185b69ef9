"""OpenAI request shapes (pydantic v2), with OpenAI's and vLLM's validation ranges.

Requests accept unknown fields (`extra="allow"`) so that clients sending newer or vendor fields
are not rejected; known fields are range-checked so that a bad value is a 400 naming its `param`.
The response bodies are in `facade.bodies`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tandem.limits import MAX_PRIORITY, MAX_TOP_LOGPROBS, MIN_PRIORITY

# Largest value of the proto's uint32 / int32 / uint64 fields.
MAX_UINT32 = 2**32 - 1
MAX_INT32 = 2**31 - 1
MAX_UINT64 = 2**64 - 1

TokenId = Annotated[int, Field(ge=0, le=MAX_INT32)]


class RequestModel(BaseModel):
    """Base of request parts: unknown fields are kept, not rejected."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


# ---------------------------------------------------------------------------------------------
# Chat messages


class ImageUrl(RequestModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(RequestModel):
    data: str  # base64-encoded audio bytes
    format: str  # "wav", "mp3", ...


class ContentPart(RequestModel):
    """One part of a message's content; the field named by `type` must be present."""

    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: ImageUrl | None = None
    input_audio: InputAudio | None = None

    @model_validator(mode="after")
    def _payload_matches_type(self) -> ContentPart:
        if getattr(self, self.type) is None:
            raise ValueError(f"a content part of type '{self.type}' needs a '{self.type}' field")
        return self


def _content_kind(value: Any) -> str:
    return "text-content" if isinstance(value, str) else "part-list"


# A message's content: a plain string or a list of parts (tags are not identifiers on purpose,
# so that error locations stay "messages[0].content").
MessageContent = Annotated[
    Annotated[str, Tag("text-content")] | Annotated[list[ContentPart], Tag("part-list")],
    Discriminator(_content_kind),
]


class FunctionCall(RequestModel):
    name: str
    arguments: str = ""  # JSON-encoded, as the model produced it


class CustomCall(RequestModel):
    name: str
    input: str = ""  # the free-form input the model wrote


class ToolCall(RequestModel):
    """An assistant's earlier call: a function's (`function`) or a custom tool's (`custom`)."""

    id: str = ""
    type: Literal["function", "custom"] = "function"
    function: FunctionCall | None = None
    custom: CustomCall | None = None

    @model_validator(mode="after")
    def _has_its_body(self) -> ToolCall:
        if getattr(self, self.type) is None:
            raise ValueError(f"a tool call of type '{self.type}' needs '{self.type}'")
        return self


class ChatMessage(RequestModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: MessageContent | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    # an assistant turn's reasoning, given back to the template (vLLM's two names)
    reasoning_content: str | None = None
    reasoning: str | None = None


class FunctionDefinition(RequestModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema of the arguments
    strict: bool | None = None


class ChatTool(RequestModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class CustomGrammar(RequestModel):
    syntax: Literal["lark", "regex"]
    definition: str


class CustomFormat(RequestModel):
    """A custom tool's input format: free text, or a Lark / regex grammar (chat nests it under
    `grammar`; Responses gives `syntax` and `definition` flat)."""

    type: Literal["text", "grammar"]
    grammar: CustomGrammar | None = None
    syntax: Literal["lark", "regex"] | None = None
    definition: str | None = None

    @model_validator(mode="after")
    def _grammar_given(self) -> CustomFormat:
        if self.type == "grammar" and self.grammar is None and (
                self.syntax is None or self.definition is None):
            raise ValueError("a grammar format needs its syntax and definition")
        return self

    def syntax_and_definition(self) -> tuple[str, str]:
        """("lark" | "regex", the definition), or ("", "") for free text."""
        if self.type == "text":
            return "", ""
        if self.grammar is not None:
            return self.grammar.syntax, self.grammar.definition
        return self.syntax or "", self.definition or ""


class CustomToolDefinition(RequestModel):
    name: str
    description: str | None = None
    format: CustomFormat | None = None  # absent: free text


class ChatCustomTool(RequestModel):
    """OpenAI's custom tool: the model calls it with free-form text, not JSON arguments."""

    type: Literal["custom"]
    custom: CustomToolDefinition


def _tool_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "custom" if kind == "custom" else "function"


AnyChatTool = Annotated[
    Annotated[ChatTool, Tag("function")] | Annotated[ChatCustomTool, Tag("custom")],
    Discriminator(_tool_kind),
]


class NamedFunction(RequestModel):
    name: str


class NamedToolChoice(RequestModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class NamedCustomChoice(RequestModel):
    """`{"type": "custom", "custom": {"name"}}`: exactly one call of that custom tool."""

    type: Literal["custom"]
    custom: NamedFunction


class AllowedTool(RequestModel):
    type: Literal["function", "custom"] = "function"
    function: NamedFunction | None = None
    custom: NamedFunction | None = None

    @model_validator(mode="after")
    def _has_its_name(self) -> AllowedTool:
        if getattr(self, self.type) is None:
            raise ValueError(f"an allowed tool of type '{self.type}' needs '{self.type}'")
        return self

    @property
    def name(self) -> str:
        return getattr(self, self.type).name


class AllowedTools(RequestModel):
    mode: Literal["auto", "required"]
    tools: list[AllowedTool] = Field(min_length=1)


class AllowedToolsChoice(RequestModel):
    """OpenAI's `{"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}`: every tool stays
    in the prompt, the model may call only these."""

    type: Literal["allowed_tools"]
    allowed_tools: AllowedTools


# ---------------------------------------------------------------------------------------------
# Shared request fields


class JsonSchemaFormat(RequestModel):
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


class StructuredOutputs(RequestModel):
    """vLLM's `structured_outputs`: exactly one constraint on the output."""

    json_schema: str | dict[str, Any] | None = Field(default=None, alias="json")  # a JSON Schema
    regex: str | None = Field(default=None, min_length=1)  # the whole output matches it
    choice: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    grammar: str | None = Field(default=None, min_length=1)  # Lark (llguidance) or GBNF
    json_object: bool | None = None  # any JSON object
    structural_tag: str | None = None  # refused: not supported

    @model_validator(mode="after")
    def _exactly_one(self) -> StructuredOutputs:
        given = [name for name in ("json", "regex", "choice", "grammar", "json_object")
                 if getattr(self, "json_schema" if name == "json" else name) not in (None, False)]
        if self.structural_tag is not None:
            raise ValueError("structural_tag is not supported")
        if len(given) != 1:
            raise ValueError("set exactly one of json, regex, choice, grammar or json_object"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class StreamOptions(RequestModel):
    include_usage: bool | None = None  # a last chunk with `choices: []` and the usage
    continuous_usage_stats: bool | None = None  # usage on every chunk (vLLM)


class SamplingFields(RequestModel):
    """Fields chat and completions share: model, sampling, stopping, streaming, vLLM extras."""

    model: str | None = None  # None/empty: FacadeSettings.default_model, then the core's default
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_UINT32)  # cap: LimitSettings.max_n
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=0, le=MAX_UINT64)
    logit_bias: dict[str, float] | None = None  # token id (as a string) → bias in [-100, 100]
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = Field(default=None, ge=-1, le=MAX_INT32)  # -1 or 0: off
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0, le=MAX_UINT32)
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    cache_salt: str | None = None  # namespaces the core's prefix cache
    bad_words: list[str] | None = None  # words never generated
    allowed_token_ids: list[TokenId] | None = None  # sample only these ids
    # alternatives per position
    prompt_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    structured_outputs: StructuredOutputs | None = None  # constrains the output (one way)
    # vLLM's older spelling of structured_outputs (at most one of all these is set)
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = Field(default=None, min_length=1)
    guided_choice: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None,
                                                                           min_length=1)
    guided_grammar: str | None = Field(default=None, min_length=1)
    # scheduling priority (lower first) under the core's --scheduling-policy priority; the
    # x-tandem-priority header overrides it (protocol_policy.apply_priority_header)
    priority: int | None = Field(default=None, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    # accepted, not acted on (listed in x-tandem-ignored-params; see protocol_policy.py)
    request_id: str | None = None
    spaces_between_special_tokens: bool | None = None
    # refused unless null (see protocol_policy.py)
    truncate_prompt_tokens: int | None = Field(default=None, ge=-1)

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.strip().isdigit() or int(key) > MAX_INT32:
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases must be in [-100, 100], got {bias}")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream", False):
            raise ValueError("stream_options can only be set when stream is true")
        return value

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


# ---------------------------------------------------------------------------------------------
# Requests


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_UINT32)  # deprecated by OpenAI
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_UINT32)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[AnyChatTool] | None = None
    tool_choice: (Literal["none", "auto", "required"] | NamedToolChoice | NamedCustomChoice
                  | AllowedToolsChoice | None) = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None  # deprecated by OpenAI: sent as tools
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # → tool_choice
    # OpenAI fields accepted but not acted on (x-tandem-ignored-params)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None  # ["text"] accepted; anything else refused
    # OpenAI fields refused unless null (they would change the output)
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    # vLLM chat extras
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    # vLLM: reasoning models close their think block after this many tokens
    thinking_token_budget: int | None = Field(default=None, ge=0, le=MAX_UINT32)

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs to be true")
        return value

    @property
    def max_output_tokens(self) -> int | None:
        """max_completion_tokens, else the older max_tokens; None: up to the context length."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


def _prompt_kind(value: Any) -> str:
    if isinstance(value, str):
        return "text-prompt"
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "token-prompts"
    if isinstance(value, list) and value and isinstance(value[0], str):
        return "text-prompts"
    return "token-prompt"


# One text, several texts, one token-id list, or several token-id lists.
Prompt = Annotated[
    Annotated[str, Tag("text-prompt"), Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Tag("text-prompts"), Field(min_length=1)]
    | Annotated[list[TokenId], Tag("token-prompt"), Field(min_length=1)]
    | Annotated[
        list[Annotated[list[TokenId], Field(min_length=1)]],
        Tag("token-prompts"),
        Field(min_length=1),
    ],
    Discriminator(_prompt_kind),
]


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: Prompt
    # OpenAI's default: 16; 0 (with echo) scores the prompt only
    max_tokens: int | None = Field(default=16, ge=0, le=MAX_UINT32)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_UINT32)  # cap: LimitSettings.max_n
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)  # top alternatives
    add_special_tokens: bool | None = None  # vLLM: prepend BOS etc. (core default: true)

    @field_validator("best_of")
    @classmethod
    def _at_least_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n") or 1
        if value is not None and value < n:
            raise ValueError(f"best_of must be greater than or equal to n ({n})")
        return value

    @property
    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a list of prompts (each one Generate call)."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]
