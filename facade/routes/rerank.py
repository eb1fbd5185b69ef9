"""POST /v1/rerank, /rerank and /v2/rerank: cross-encoder relevance over one `Rerank` call.

- /v1/rerank and /rerank take Jina's / Cohere v1's body (`query`, `documents` as texts or
  `{"text": ...}` objects, `top_n`, `return_documents`, default true as in Jina and vLLM) and
  answer `{"id", "model", "results": [{"index", "relevance_score", "document"?}], "usage"}`.
- /v2/rerank takes Cohere v2's body (the same fields; `return_documents` defaults to false) and
  answers Cohere v2's `{"id", "results", "meta"}`, which the `cohere` SDK's `ClientV2.rerank`
  reads.

vLLM's cross-encoder /score (`text_1` / `text_2`) is facade/routes/score.py's, next to SGLang's.

Results are best first. A request without `model` goes to the core's reranking model; naming a
model that is not a reranker is a 400 `unsupported_parameter`, an unknown one a 404. Every
pair is truncated to the model's length (longest first), as sentence-transformers does.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.convert import check_rerank_results
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub
from facade.generation import call_core
from facade.limits import Limits, check_input_count
from facade.openapi import RERANK_RESPONSES, RERANK_V2_RESPONSES
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
)
from facade.sse import cancel_on_disconnect
from tandem.v1 import inference_pb2 as pb

router = APIRouter(tags=["rerank"])


async def _rerank(body: RerankRequest, request: Request, stub, options, limits
                  ) -> tuple[pb.RerankResponse, dict[str, str]]:
    ignored = ignored_header(apply_field_policy(body, "rerank"))
    check_input_count("documents", len(body.documents), limits)
    rerank = pb.RerankRequest(model=body.model or "", query=body.query, documents=body.texts)
    if body.top_n is not None:
        rerank.top_n = body.top_n
    reply = await cancel_on_disconnect(request, call_core(stub.Rerank, rerank, options))
    check_rerank_results(reply, len(body.documents), body.top_n)
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
