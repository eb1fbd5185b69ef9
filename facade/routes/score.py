"""POST /v1/score: SGLang's scoring extension over one `Score` call.

For each item the core builds the prompt query+item (item+query with `item_first`) and returns,
per label token id in request order, its probability as the next token under the full
next-token distribution — or, with `apply_softmax`, the softmax over the label ids' logits
alone. Answered as `{"object": "scoring", "model", "scores", "usage", "created"}`; the openai SDK
reaches it with `client.post("/score", body={...}, cast_to=dict[str, Any])` (a bare `dict`
fails inside the SDK's own response parser in openai 1.0.0 and in 3.x).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.bodies import PromptTokensDetails, Usage
from facade.convert import finite_floats, scoring_to_score
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub, Settings, resolve_model
from facade.errors import internal_error
from facade.generation import call_core
from facade.limits import Limits, check_input_count
from facade.openapi import SCORE_RESPONSES
from facade.protocol_extra import ScoringRequest, ScoringResponse
from facade.protocol_policy import apply_field_policy, ignored_header
from facade.sse import cancel_on_disconnect
from tandem.v1 import inference_pb2 as pb

router = APIRouter(tags=["score"])


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
    body: ScoringRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """Next-token probabilities of the label token ids after each query+item prompt."""
    ignored = ignored_header(apply_field_policy(body, "score"))
    check_input_count("items", len(body.items), limits)
    model = resolve_model(body.model, settings)
    score = scoring_to_score(body, model)
    reply = await cancel_on_disconnect(request, call_core(stub.Score, score, options))
    response = scoring_response(body, reply, model)
    return JSONResponse(response.model_dump(mode="json"), headers=ignored)
