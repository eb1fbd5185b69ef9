"""POST /v1/rerank, /rerank, /v2/rerank and /score: cross-encoder relevance over one `Rerank` call.

- /v1/rerank and /rerank take Jina's / Cohere v1's body (`query`, `documents` as texts or
  `{"text": ...}` objects, `top_n`, `return_documents`, default true as in Jina and vLLM) and
  answer `{"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage"}`.
- /v2/rerank takes Cohere v2's body (the same fields; `return_documents` defaults to false) and
  answers Cohere v2's `{"id", "results", "meta"}`, which the `cohere` SDK's `ClientV2.rerank`
  reads.
- /score is vLLM's cross-encoder form: `text_1` (one text, or a list) against `text_2`; one text
  is paired with every text_2, lists of one length pairwise; answered as vLLM does,
  `{"object": "list", "data": [{"index", "object": "score", "score"}], "usage", ...}` in pair
  order. (/v1/score stays SGLang's label-token scoring.)

Results are best first. A request without `model` goes to the core's reranking model; naming a
model that is not a reranker is a 400 `unsupported_parameter`, an unknown one a 404. Every
pair is truncated to the model's length (longest first), as sentence-transformers does.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.convert import finite_floats
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub
from facade.errors import internal_error, invalid_request
from facade.generation import call_core
from facade.limits import Limits, check_input_count
from facade.openapi import RERANK_RESPONSES, RERANK_V2_RESPONSES, SCORE_TEXTS_RESPONSES
from facade.protocol_policy import apply_field_policy, ignored_header
from facade.protocol_rerank import (
    ApiVersion,
    BilledUnits,
    RerankMeta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankResultDocument,
    RerankUsage,
    RerankV2Response,
    ScoreData,
    ScoreTextsRequest,
    ScoreTextsResponse,
    ScoreUsage,
)
from facade.sse import cancel_on_disconnect
from tandem.v1 import inference_pb2 as pb

router = APIRouter(tags=["rerank"])


def _checked(reply: pb.RerankResponse, num_documents: int, top_n: int | None) -> None:
    expected = min(num_documents, top_n) if top_n else num_documents
    indexes = [result.index for result in reply.results]
    if len(indexes) != expected or len(set(indexes)) != expected or any(
            index >= num_documents for index in indexes):
        raise internal_error(f"The core returned {len(indexes)} rerank results for "
                             f"{num_documents} documents (top_n {top_n}).")
    finite_floats((result.relevance_score for result in reply.results), "relevance score")


async def _rerank(body: RerankRequest, request: Request, stub, options, limits
                  ) -> tuple[pb.RerankResponse, dict[str, str]]:
    ignored = ignored_header(apply_field_policy(body, "rerank"))
    check_input_count("documents", len(body.documents), limits)
    rerank = pb.RerankRequest(model=body.model or "", query=body.query, documents=body.texts)
    if body.top_n is not None:
        rerank.top_n = body.top_n
    reply = await cancel_on_disconnect(request, call_core(stub.Rerank, rerank, options))
    _checked(reply, len(body.documents), body.top_n)
    return reply, ignored


def _results(reply: pb.RerankResponse, texts: list[str], with_documents: bool
             ) -> list[RerankResult]:
    return [RerankResult(index=result.index, relevance_score=result.relevance_score,
                         document=RerankResultDocument(text=texts[result.index])
                         if with_documents else None)
            for result in reply.results]


@router.post("/v1/rerank", response_model=None, responses=RERANK_RESPONSES,
             dependencies=API_KEY_REQUIRED)
@router.post("/rerank", response_model=None, responses=RERANK_RESPONSES,
             dependencies=API_KEY_REQUIRED, include_in_schema=False)
async def create_rerank(body: RerankRequest, request: Request, stub: CoreStub,
                        options: CoreCallOptions, limits: Limits) -> Response:
    """Jina / Cohere v1 rerank: the documents by relevance to the query, best first."""
    reply, ignored = await _rerank(body, request, stub, options, limits)
    tokens = reply.usage.prompt_tokens
    response = RerankResponse(
        id=f"rerank-{uuid.uuid4().hex}", model=reply.model or body.model or "",
        results=_results(reply, body.texts, body.return_documents is not False),
        usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens))
    return JSONResponse(response.model_dump(mode="json", exclude_none=True), headers=ignored)


@router.post("/v2/rerank", response_model=None, responses=RERANK_V2_RESPONSES,
             dependencies=API_KEY_REQUIRED)
async def create_rerank_v2(body: RerankRequest, request: Request, stub: CoreStub,
                           options: CoreCallOptions, limits: Limits) -> Response:
    """Cohere v2 rerank: the documents by relevance to the query, best first."""
    reply, ignored = await _rerank(body, request, stub, options, limits)
    response = RerankV2Response(
        id=f"rerank-{uuid.uuid4().hex}",
        results=_results(reply, body.texts, bool(body.return_documents)),
        meta=RerankMeta(api_version=ApiVersion(version="2"), billed_units=BilledUnits(),
                        tokens={"input_tokens": reply.usage.prompt_tokens}))
    return JSONResponse(response.model_dump(mode="json", exclude_none=True), headers=ignored)


def _pairs(body: ScoreTextsRequest) -> tuple[list[str], list[str]]:
    """vLLM's pairing: one text_1 against every text_2, else lists of one length pairwise."""
    first, second = list(body.text_1), list(body.text_2)
    if not all(first):
        raise invalid_request("text_1 must not contain empty texts", param="text_1")
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise invalid_request(f"text_1 has {len(first)} texts and text_2 {len(second)}: give "
                              "one text_1, or as many as text_2", param="text_1")
    return first, second


@router.post("/score", response_model=None, responses=SCORE_TEXTS_RESPONSES,
             dependencies=API_KEY_REQUIRED)
async def create_score_texts(body: ScoreTextsRequest, request: Request, stub: CoreStub,
                             options: CoreCallOptions, limits: Limits) -> Response:
    """vLLM's cross-encoder score: one score per (text_1, text_2) pair, in pair order."""
    ignored = ignored_header(apply_field_policy(body, "rerank"))
    first, second = _pairs(body)
    check_input_count("text_2", len(second), limits)
    rerank = pb.RerankRequest(model=body.model or "", documents=second)
    if len(set(first)) == 1:
        rerank.query = first[0]
    else:
        rerank.queries[:] = first
    reply = await cancel_on_disconnect(request, call_core(stub.Rerank, rerank, options))
    _checked(reply, len(second), None)
    tokens = reply.usage.prompt_tokens
    response = ScoreTextsResponse(
        id=f"score-{uuid.uuid4().hex}", created=int(time.time()),
        model=reply.model or body.model or "",
        data=[ScoreData(index=result.index, score=result.relevance_score)
              for result in sorted(reply.results, key=lambda result: result.index)],
        usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens))
    return JSONResponse(response.model_dump(mode="json"), headers=ignored)
