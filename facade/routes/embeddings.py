"""POST /v1/embeddings: one `Embed` call for every input, answered in OpenAI's shape.

`encoding_format: "base64"` sends each vector as little-endian float32 bytes, base64-encoded, as
OpenAI does (the openai SDK asks for it and decodes it itself when the caller names no format).
A request without `model` (or with "") lets the core pick its default embedding model: the
facade's `default_model` is a generative model and is not used here. Usage is the core's count.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.convert import base64_float32, embeddings_to_embed, finite_floats
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub
from facade.errors import internal_error
from facade.generation import call_core
from facade.limits import Limits, check_input_count
from facade.openapi import EMBEDDING_RESPONSES
from facade.protocol_extra import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)
from facade.protocol_policy import apply_field_policy, ignored_header
from facade.sse import cancel_on_disconnect
from tandem.v1 import inference_pb2 as pb

router = APIRouter(tags=["embeddings"])


def embedding_response(
    body: EmbeddingRequest, reply: pb.EmbedResponse, model: str
) -> EmbeddingResponse:
    """The core's vectors in OpenAI's shape, one per input in input order."""
    num_inputs = len(body.inputs)
    indexes = sorted(embedding.index for embedding in reply.embeddings)
    if indexes != list(range(num_inputs)):
        raise internal_error(
            f"The core returned {len(indexes)} embeddings, not one per index, for {num_inputs} "
            "inputs."
        )
    data = []
    for embedding in sorted(reply.embeddings, key=lambda embedding: embedding.index):
        values = finite_floats(embedding.values, "embedding value")
        encoded = base64_float32(values) if body.encoding_format == "base64" else values
        data.append(EmbeddingData(index=embedding.index, embedding=encoded))
    prompt_tokens = reply.usage.prompt_tokens
    return EmbeddingResponse(
        data=data,
        model=reply.model or model,
        usage=EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )


@router.post(
    "/v1/embeddings",
    response_model=None,
    responses=EMBEDDING_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def create_embeddings(
    body: EmbeddingRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    limits: Limits,
) -> Response:
    """OpenAI embeddings: float lists or base64 float32."""
    ignored = ignored_header(apply_field_policy(body, "embeddings"))
    check_input_count("input", len(body.inputs), limits)
    model = body.model or ""
    embed = embeddings_to_embed(body, model)
    reply = await cancel_on_disconnect(request, call_core(stub.Embed, embed, options))
    response = embedding_response(body, reply, model)
    return JSONResponse(response.model_dump(mode="json"), headers=ignored)
