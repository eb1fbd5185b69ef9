"""POST /v1/score: SGLang's scoring extension over one `Score` call, and vLLM's cross-encoder
score (`text_1` / `text_2`, at POST /score and, told apart by its `text_1`, at /v1/score) over
one `Rerank` call.

For each item the core builds the prompt query+item (item+query with `item_first`) and returns,
per label token id in request order, its probability as the next token under the full
next-token distribution — or, with `apply_softmax`, the softmax over the label ids' logits
alone. Answered as `{"object": "scoring", "model", "scores", "usage", "created"}`; the openai SDK
reaches it with `client.post("/score", body={...}, cast_to=dict[str, Any])` (a bare `dict`
fails inside the SDK's own response parser in openai 1.0.0 and in 3.x).

vLLM's form pairs one `text_1` with every `text_2`, or lists of one length element by element,
and answers `{"id", "object": "list", "created", "model", "data": [{"index", "object": "score",
"score"}] (pair order), "usage"}`; a request without `model` goes to the core's reranking model.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Discriminator, Tag

from facade.bodies import PromptTokensDetails, Usage
from facade.convert import check_rerank_results, finite_floats, scoring_to_score
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub, Settings, resolve_model
from facade.errors import internal_error, invalid_request
from facade.generation import call_core
from facade.limits import Limits, check_input_count
from facade.openapi import SCORE_RESPONSES, SCORE_TEXTS_RESPONSES
from facade.protocol_extra import ScoringRequest, ScoringResponse
from facade.protocol_policy import apply_field_policy, ignored_header
from facade.protocol_rerank import ScoreData, ScoreTextsRequest, ScoreTextsResponse, ScoreUsage
from facade.sse import cancel_on_disconnect
from tandem.v1 import inference_pb2 as pb

router = APIRouter(tags=["score"])


def _score_form(value: Any) -> str:
    return "cross-encoder-form" if isinstance(value, dict) and "text_1" in value else "label-form"


# /v1/score's body: SGLang's label scoring, or vLLM's cross-encoder form when it has `text_1`
# (tags are not identifiers on purpose: error locations stay the fields' own).
ScoreBody = Annotated[
    Annotated[ScoringRequest, Tag("label-form")]
    | Annotated[ScoreTextsRequest, Tag("cross-encoder-form")],
    Discriminator(_score_form),
]


def scoring_response(body: ScoringRequest, reply: pb.ScoreResponse, model: str) -> ScoringResponse:
    """The core's scores in the response shape: one list per item, one number per label."""
    num_labels = len(body.label_token_ids)
    if len(reply.items) != len(body.items):
        raise internal_error(f"The core scored {len(reply.items)} of {len(body.items)} items.")
    scores = []
    for item in reply.items:
        if len(item.scores) != num_labels:
            raise internal_error(
                f"The core returned {len(item.scores)} scores for {num_labels} label token ids."
            )
        scores.append(finite_floats(item.scores, "score"))
    usage = reply.usage
    return ScoringResponse(
        model=reply.model or model,
        scores=scores,
        usage=Usage(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        ),
        created=int(time.time()),
    )


@router.post(
    "/v1/score",
    response_model=None,
    responses=SCORE_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def create_score(
    body: ScoreBody,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """Next-token probabilities of the label token ids after each query+item prompt."""
    if isinstance(body, ScoreTextsRequest):
        return await _score_texts(body, request, stub, options, limits)
    ignored = ignored_header(apply_field_policy(body, "score"))
    check_input_count("items", len(body.items), limits)
    model = resolve_model(body.model, settings)
    score = scoring_to_score(body, model)
    reply = await cancel_on_disconnect(request, call_core(stub.Score, score, options))
    response = scoring_response(body, reply, model)
    return JSONResponse(response.model_dump(mode="json"), headers=ignored)


def _pairs(body: ScoreTextsRequest) -> tuple[list[str], list[str]]:
    """vLLM's pairing: one text_1 against every text_2, else lists of one length pairwise."""
    first, second = list(body.text_1), list(body.text_2)
    if not all(first):
        raise invalid_request("text_1 must not contain empty texts", param="text_1")
    if len(first) == 1:
        first = first * len(second)
    if len(first) != len(second):
        raise invalid_request(
            f"text_1 has {len(first)} texts and text_2 {len(second)}: give one text_1, or as "
            "many as text_2",
            param="text_1",
        )
    return first, second


async def _score_texts(
    body: ScoreTextsRequest, request: Request, stub, options, limits: Limits
) -> Response:
    ignored = ignored_header(apply_field_policy(body, "rerank"))
    first, second = _pairs(body)
    check_input_count("text_2", len(second), limits)
    rerank = pb.RerankRequest(model=body.model or "", documents=second)
    if len(set(first)) == 1:
        rerank.query = first[0]
    else:
        rerank.queries[:] = first
    reply = await cancel_on_disconnect(request, call_core(stub.Rerank, rerank, options))
    check_rerank_results(reply, len(second), None)
    tokens = reply.usage.prompt_tokens
    response = ScoreTextsResponse(
        id=f"score-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=reply.model or body.model or "",
        data=[
            ScoreData(index=result.index, score=result.relevance_score)
            for result in sorted(reply.results, key=lambda result: result.index)
        ],
        usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
    return JSONResponse(response.model_dump(mode="json"), headers=ignored)


@router.post(
    "/score",
    response_model=None,
    responses=SCORE_TEXTS_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def create_score_texts(
    body: ScoreTextsRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    limits: Limits,
) -> Response:
    """vLLM's cross-encoder score: one score per (text_1, text_2) pair, in pair order."""
    return await _score_texts(body, request, stub, options, limits)
