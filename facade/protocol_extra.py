"""Request and response shapes (pydantic v2) of POST /v1/embeddings (OpenAI's), POST /v1/score
(SGLang's scoring extension) and POST /tokenize, /detokenize (vLLM's).

Like facade/protocol.py: unknown request fields are kept (`extra="allow"`, reported by the
field policy), known ones are checked so that a bad value is a 400 naming its `param`. What
only the model can tell (token ids inside the vocabulary, prompt length, `dimensions` above the
model's size) is the core's to check.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from facade.bodies import ResponseModel, Usage
from facade.protocol import (
    MAX_UINT32,
    AnyChatTool,
    ChatMessage,
    Prompt,
    RequestModel,
    TokenId,
)

# ---------------------------------------------------------------------------------------------
# POST /v1/embeddings


class EmbeddingRequest(RequestModel):
    """POST /v1/embeddings (OpenAI's fields; `user` is accepted and ignored)."""

    # Required by OpenAI's schema; absent or "" lets the core pick its default embedding model.
    model: str | None = None
    # One text, several texts, one token-id list or several; nothing empty.
    input: Prompt
    # "float" (the default): lists of numbers; "base64": little-endian float32 bytes, base64.
    encoding_format: Literal["float", "base64"] | None = None
    # Truncate to this many dimensions and re-normalize; the core checks the model's size.
    dimensions: int | None = Field(default=None, ge=1, le=MAX_UINT32)
    user: str | None = None  # accepted, not acted on (x-tandem-ignored-params)

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """The input as a list of inputs (each one embedding)."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [list(self.input)]  # type: ignore[arg-type]
        return list(self.input)  # type: ignore[arg-type]


class EmbeddingData(ResponseModel):
    object: Literal["embedding"] = "embedding"
    index: int  # position of the input in the request
    embedding: list[float] | str  # a base64 string with encoding_format "base64"


class EmbeddingUsage(ResponseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(ResponseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


# ---------------------------------------------------------------------------------------------
# POST /v1/score


def _input_kind(value: Any) -> str:
    return "text-input" if isinstance(value, str) else "token-input"


def _items_kind(value: Any) -> str:
    if isinstance(value, list) and value and not isinstance(value[0], str):
        return "token-items"
    return "text-items"


# A query: a text or a token-id list (tags are not identifiers on purpose, so that error
# locations stay "query[0]").
ScoreQuery = Annotated[
    Annotated[str, Tag("text-input")] | Annotated[list[TokenId], Tag("token-input")],
    Discriminator(_input_kind),
]
# The items: all texts or all token-id lists.
ScoreItems = Annotated[
    Annotated[list[str], Tag("text-items"), Field(min_length=1)]
    | Annotated[list[list[TokenId]], Tag("token-items"), Field(min_length=1)],
    Discriminator(_items_kind),
]


def input_kind(value: str | list[int] | list[str] | list[list[int]]) -> str:
    """What a query or an item list holds ("text" or "token ids"), for error messages."""
    if isinstance(value, str) or (value and isinstance(value[0], str)):
        return "text"
    return "token ids"


class ScoringRequest(RequestModel):
    """POST /v1/score: the probability of each label token id as the next token after each
    prompt query+item (item+query with `item_first`)."""

    # None/empty: FacadeSettings.default_model, then the core's default generative model.
    model: str | None = None
    query: ScoreQuery
    items: ScoreItems  # cap: LimitSettings.max_inputs
    label_token_ids: list[TokenId] = Field(min_length=1)
    # Softmax over the label ids' logits (sums to 1) instead of full-vocabulary probabilities.
    apply_softmax: bool | None = None  # None (null or absent): false
    item_first: bool | None = None  # the prompt is item+query; None: false

    @field_validator("items")
    @classmethod
    def _same_kind_as_query(cls, value: list[Any], info: ValidationInfo) -> list[Any]:
        query = info.data.get("query")
        if query is None or not value:
            return value
        query_kind = "text" if isinstance(query, str) else "token ids"
        if input_kind(value) != query_kind:
            raise ValueError(
                f"the items must be of the same kind as the query: the query is {query_kind}, "
                f"the items are {input_kind(value)}"
            )
        return value


class ScoringResponse(ResponseModel):
    object: Literal["scoring"] = "scoring"
    model: str
    scores: list[list[float]]  # per item, one number per label token id, in request order
    usage: Usage  # prompt tokens of every query+item prompt; completion_tokens is 0
    created: int  # unix seconds


# ---------------------------------------------------------------------------------------------
# POST /tokenize, POST /detokenize (vLLM's shapes)


class TokenizeRequest(RequestModel):
    """POST /tokenize: a `prompt`, or chat `messages` (the core applies the chat template)."""

    model: str | None = None  # None/empty: the default model
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None  # prompt: BOS etc. (core default: true)
    return_token_strs: bool | None = None  # also return each token's string
    # chat options, as on /v1/chat/completions
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[AnyChatTool] | None = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self


class TokenizeResponse(ResponseModel):
    count: int  # number of tokens
    max_model_len: int  # the model's context length
    tokens: list[int]  # the token ids
    token_strs: list[str] | None = None  # with return_token_strs


class DetokenizeRequest(RequestModel):
    """POST /detokenize: token ids back to text."""

    model: str | None = None
    tokens: list[TokenId]


class DetokenizeResponse(ResponseModel):
    prompt: str  # the decoded text
