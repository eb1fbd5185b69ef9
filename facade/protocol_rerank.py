"""Request and response shapes (pydantic v2) of rerank and cross-encoder scoring: POST
/v1/rerank and /rerank (Jina's / Cohere's v1 shape, as vLLM serves them), POST /v2/rerank
(Cohere v2's) and POST /score (vLLM's `text_1` / `text_2` form for cross-encoders).

Like facade/protocol.py: unknown request fields are kept (`extra="allow"`, reported by the
field policy), known ones are checked so that a bad value is a 400 naming its `param`. What only
the model can tell (is it a reranker, how long may a pair be) is the core's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from facade.bodies import ResponseModel
from facade.protocol import MAX_UINT32, RequestModel


class RerankDocument(RequestModel):
    """A document given as an object (Cohere v1, Jina): its `text` is what is scored."""

    text: str


class RerankRequest(RequestModel):
    """POST /v1/rerank, /rerank (Jina / Cohere v1) and /v2/rerank (Cohere v2)."""

    # None/empty: the core's reranking model (--rerank-model).
    model: str | None = None
    query: str = Field(min_length=1)
    # Texts, or objects with a `text` (v1); one result per document. Cap: max_inputs.
    documents: list[str | RerankDocument] = Field(min_length=1)
    # The best this many results (None: every document; more than there are: all of them).
    top_n: int | None = Field(default=None, ge=1, le=MAX_UINT32)
    # Echo each document's text in its result. None: true on v1 (Jina, vLLM), false on v2.
    return_documents: bool | None = None

    @property
    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResultDocument(ResponseModel):
    text: str


class RerankResult(ResponseModel):
    index: int  # the document's position in the request
    relevance_score: float  # the cross-encoder's score (Sigmoid: between 0 and 1)
    document: RerankResultDocument | None = None  # with return_documents


class RerankUsage(ResponseModel):
    prompt_tokens: int = 0  # every (query, document) pair's tokens, after truncation
    total_tokens: int = 0


class RerankResponse(ResponseModel):
    """/v1/rerank and /rerank: Jina's and vLLM's shape (Cohere v1's `id` and `results` too)."""

    id: str
    model: str
    results: list[RerankResult]  # best first, at most top_n
    usage: RerankUsage


class ApiVersion(ResponseModel):
    version: str


class BilledUnits(ResponseModel):
    search_units: int = 1  # Cohere bills a query over up to 100 documents as one unit


class RerankMeta(ResponseModel):
    api_version: ApiVersion
    billed_units: BilledUnits
    tokens: dict[str, int]  # {"input_tokens": the pairs' tokens}


class RerankV2Response(ResponseModel):
    """/v2/rerank: Cohere v2's shape (its SDK's V2RerankResponse)."""

    id: str
    results: list[RerankResult]  # best first, at most top_n
    meta: RerankMeta


class ScoreTextsRequest(RequestModel):
    """POST /score (vLLM's cross-encoder form): `text_1` paired with each of `text_2` (one
    text, or a list of one, is paired with every text_2), or lists of one length pairwise."""

    model: str | None = None  # None/empty: the core's reranking model
    text_1: str | list[str] = Field(min_length=1)
    text_2: str | list[str] = Field(min_length=1)

    @field_validator("text_1", "text_2")
    @classmethod
    def _texts(cls, value: str | list[str]) -> list[str]:
        return [value] if isinstance(value, str) else value


class ScoreData(ResponseModel):
    index: int  # the pair's position
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(ResponseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int = 0


class ScoreTextsResponse(ResponseModel):
    id: str
    object: Literal["list"] = "list"
    created: int  # unix seconds
    model: str
    data: list[ScoreData]  # in pair order
    usage: ScoreUsage
