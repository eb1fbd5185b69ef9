"""POST /tokenize and POST /detokenize, vLLM's shapes, over the core's Tokenize and Detokenize
RPCs: the facade never tokenizes; the core applies the model's tokenizer and chat template.

/tokenize takes `prompt` or `messages` (+ `add_special_tokens`, the chat-template options) and
answers `{"count", "max_model_len", "tokens", "token_strs"}`; /detokenize takes `tokens` and
answers `{"prompt"}`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.convert import detokenize_request, tokenize_request
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub, Settings, resolve_model
from facade.errors import ApiError
from facade.generation import call_core
from facade.limits import Limits, check_message_count
from facade.openapi import DETOKENIZE_RESPONSES, TOKENIZE_RESPONSES
from facade.protocol_extra import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from facade.protocol_policy import apply_field_policy, ignored_header
from facade.sse import cancel_on_disconnect

router = APIRouter(tags=["tokenize"])


@router.post(
    "/tokenize",
    response_model=None,
    responses=TOKENIZE_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def tokenize(
    body: TokenizeRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """The token ids the core's tokenizer (and chat template) makes of a prompt or messages."""
    ignored = ignored_header(apply_field_policy(body, "tokenize"))
    check_message_count(len(body.messages or []), limits)
    message = tokenize_request(body, resolve_model(body.model, settings))
    reply = await cancel_on_disconnect(request, call_core(stub.Tokenize, message, options))
    response = TokenizeResponse(
        count=len(reply.token_ids),
        max_model_len=reply.max_model_len,
        tokens=list(reply.token_ids),
        token_strs=list(reply.tokens) if body.return_token_strs else None,
    )
    return JSONResponse(response.model_dump(mode="json"), headers=ignored)


@router.post(
    "/detokenize",
    response_model=None,
    responses=DETOKENIZE_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def detokenize(
    body: DetokenizeRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
) -> Response:
    """The text of some token ids (special tokens skipped, as the core does by default)."""
    ignored = ignored_header(apply_field_policy(body, "tokenize"))
    message = detokenize_request(body, resolve_model(body.model, settings))
    try:
        reply = await cancel_on_disconnect(request, call_core(stub.Detokenize, message, options))
    except ApiError as error:
        if error.param == "token_ids":  # the proto's name of this route's `tokens`
            error.param = "tokens"
        raise
    response = DetokenizeResponse(prompt=reply.text)
    return JSONResponse(response.model_dump(mode="json"), headers=ignored)
