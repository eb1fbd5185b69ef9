"""GET /v1/models and GET /v1/models/{id}: the core's `ListModels`, in OpenAI's shape.

Model objects carry OpenAI's `id`, `object`, `created`, `owned_by` plus the core's
`description`, `is_demo` and `max_model_len`, so that a demo model is visible as one.
"""

from __future__ import annotations

from fastapi import APIRouter

from facade.bodies import ModelCard, ModelList
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub
from facade.errors import ApiError
from facade.generation import CallOptions, call_core
from facade.openapi import MODEL_LIST_RESPONSES, MODEL_RESPONSES
from tandem.v1 import inference_pb2 as pb
from tandem.v1.inference_pb2_grpc import InferenceStub

router = APIRouter(tags=["models"])


def model_card(info: pb.ModelInfo) -> ModelCard:
    return ModelCard(
        id=info.id,
        created=info.created,
        owned_by=info.owned_by or "tandem",
        description=info.description,
        is_demo=info.is_demo,
        max_model_len=info.max_model_len or None,
    )


async def list_model_cards(stub: InferenceStub, options: CallOptions) -> list[ModelCard]:
    response = await call_core(stub.ListModels, pb.ListModelsRequest(), options)
    return [model_card(info) for info in response.models]


@router.get("/v1/models", responses=MODEL_LIST_RESPONSES, dependencies=API_KEY_REQUIRED)
async def list_models(stub: CoreStub, options: CoreCallOptions) -> ModelList:
    """Every model the core serves."""
    return ModelList(data=await list_model_cards(stub, options))


@router.get("/v1/models/{model_id:path}", responses=MODEL_RESPONSES, dependencies=API_KEY_REQUIRED)
async def retrieve_model(model_id: str, stub: CoreStub, options: CoreCallOptions) -> ModelCard:
    """One model by id; 404 model_not_found when the core does not serve it."""
    for card in await list_model_cards(stub, options):
        if card.id == model_id:
            return card
    raise ApiError(
        404,
        f"The model '{model_id}' does not exist.",
        param="model",
        code="model_not_found",
    )
