"""POST /v1/responses, GET and DELETE /v1/responses/{response_id}, GET
/v1/responses/{response_id}/input_items and POST /v1/responses/input_tokens: OpenAI's Responses
API.

A Responses request is translated into the internal chat request (facade/responses/translate.py)
and served by the chat pipeline that /v1/chat/completions uses (facade/pipeline/chat.py:
`open_chat`, `chunk_choice`, `complete_chat`), so sampling, tools, `tool_choice`, structured
output and limits behave exactly as on /v1/chat/completions. The answer is turned back into
output items; streaming emits OpenAI's event sequence (facade/responses/stream.py). With `store`
(the default) the response and its conversation go into the response store
(facade/responses/store.py), where `previous_response_id` finds them. input_tokens counts the
prompt the same request would render, through the core's Tokenize (the facade never tokenizes).
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from facade.convert import chat_tokenize_request
from facade.dependencies import API_KEY_REQUIRED, CoreCallOptions, CoreStub, Settings, resolve_model
from facade.errors import ApiError, invalid_request, service_unavailable
from facade.generation import call_core
from facade.limits import Limits, check_chat_limits
from facade.openapi import (
    INPUT_TOKENS_RESPONSES,
    RESPONSE_DELETE_RESPONSES,
    RESPONSE_GET_RESPONSES,
    RESPONSE_INPUT_ITEMS_RESPONSES,
    RESPONSES_RESPONSES,
)
from facade.pipeline import complete_chat, open_chat
from facade.protocol_policy import apply_field_policy, ignored_header
from facade.responses.protocol import (
    DeletedResponse,
    InputItemList,
    InputTokens,
    ResponsesRequest,
)
from facade.responses.store import EntryTooLarge, ResponseStore, StoredResponse, StoreUnavailable
from facade.responses.stream import ResponseRun, response_events, response_object
from facade.responses.translate import (
    input_item_resources,
    new_id,
    output_message,
    responses_params,
    to_chat_request,
)
from facade.sse import STREAM_HEADERS, EventStreamResponse, cancel_on_disconnect, guarded_stream

logger = logging.getLogger(__name__)

router = APIRouter(tags=["responses"])


def get_response_store(request: Request) -> ResponseStore:
    store = getattr(request.app.state, "responses_store", None)
    if store is None:
        raise service_unavailable("The facade has no response store yet.")
    return store


Store = Annotated[ResponseStore, Depends(get_response_store)]


def store_unavailable(error: StoreUnavailable) -> ApiError:
    return service_unavailable(f"{error} Retry, or send the request with store: false.")


def not_found(response_id: str, param: str | None) -> ApiError:
    return ApiError(
        404,
        f"Response with id '{response_id}' not found (unknown, expired or deleted).",
        param=param,
        code="response_not_found",
    )


async def _read(store: ResponseStore, response_id: str, param: str | None) -> StoredResponse:
    try:
        entry = await store.get(response_id)
    except StoreUnavailable as error:
        raise store_unavailable(error) from None
    if entry is None:
        raise not_found(response_id, param)
    return entry


async def save(store: ResponseStore, run: ResponseRun, response: dict[str, Any]) -> None:
    """Keep a finished response with its conversation (when the request asked to store it)."""
    if not run.request.store:
        return
    messages = run.conversation + [output_message(response["output"])]
    try:
        await store.put(StoredResponse(response=response, messages=messages,
                                       input_items=input_item_resources(run.request)))
    except EntryTooLarge as error:
        logger.warning("response %s not stored: %s", response["id"], error)
    except StoreUnavailable as error:
        raise store_unavailable(error) from None


@router.post(
    "/v1/responses",
    response_model=None,
    responses=RESPONSES_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def create_response(
    body: ResponsesRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
    store: Store,
) -> Response:
    """OpenAI Responses (streaming and not), served through the chat pipeline."""
    ignored = ignored_header(apply_field_policy(body, "responses"))
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        previous = await _read(store, body.previous_response_id, "previous_response_id")
        history = previous.messages
    if body.store:
        try:  # a store that is down is a 503 before any token is spent
            await store.check()
        except StoreUnavailable as error:
            raise store_unavailable(error) from None
    with responses_params():
        chat, conversation = to_chat_request(body, history)
        check_chat_limits(chat, limits)
        chat_run, generation = await open_chat(chat, request, stub, options, settings)
    run = ResponseRun(
        request=body,
        chat=chat_run,
        response_id=new_id("resp"),
        created_at=int(time.time()),
        conversation=conversation,
    )
    if body.stream:
        events = response_events(run, generation, lambda response: save(store, run, response))
        stream = guarded_stream(
            events, generation.cancel, run.response_id,
            error_event=run.error_events, last_event=None,
        )  # fmt: skip
        return EventStreamResponse(stream, headers={**STREAM_HEADERS, **ignored})
    try:
        completion = await cancel_on_disconnect(request, complete_chat(chat_run, generation))
    finally:
        generation.cancel()
    response = response_object(run, completion)
    await save(store, run, response)
    return JSONResponse(response, headers=ignored)


@router.get(
    "/v1/responses/{response_id}",
    response_model=None,
    responses=RESPONSE_GET_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def get_response(response_id: str, store: Store) -> Response:
    """A stored response, as it was returned."""
    entry = await _read(store, response_id, None)
    return JSONResponse(entry.response)


@router.delete(
    "/v1/responses/{response_id}",
    response_model=None,
    responses=RESPONSE_DELETE_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def delete_response(response_id: str, store: Store) -> Response:
    """Remove a stored response (a later previous_response_id naming it is a 404)."""
    try:
        deleted = await store.delete(response_id)
    except StoreUnavailable as error:
        raise store_unavailable(error) from None
    if not deleted:
        raise not_found(response_id, None)
    return JSONResponse(DeletedResponse(id=response_id).model_dump(mode="json"))


@router.get(
    "/v1/responses/{response_id}/input_items",
    response_model=None,
    responses=RESPONSE_INPUT_ITEMS_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def list_input_items(
    response_id: str,
    store: Store,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: str | None = None,
) -> Response:
    """The input items of a stored response (OpenAI's list: `limit`, `order`, `after`)."""
    entry = await _read(store, response_id, None)
    items = list(entry.input_items if order == "asc" else reversed(entry.input_items))
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise invalid_request(f"No input item with id '{after}' in this response.", "after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    listing = InputItemList(data=page, has_more=len(items) > limit,
                            first_id=page[0]["id"] if page else "",
                            last_id=page[-1]["id"] if page else "")  # fmt: skip
    return JSONResponse(listing.model_dump(mode="json"))


@router.post(
    "/v1/responses/input_tokens",
    response_model=None,
    responses=INPUT_TOKENS_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def count_input_tokens(
    body: ResponsesRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    store: Store,
) -> Response:
    """How many tokens the input of this Responses request (instructions, tools and
    `previous_response_id`'s conversation included) comes to, as the core counts them."""
    ignored = ignored_header(apply_field_policy(body, "responses"))
    history: list[dict[str, Any]] = []
    if body.previous_response_id:
        history = (await _read(store, body.previous_response_id, "previous_response_id")).messages
    with responses_params():
        chat, _ = to_chat_request(body, history)
        message = chat_tokenize_request(chat, resolve_model(chat.model, settings))
        reply = await cancel_on_disconnect(request, call_core(stub.Tokenize, message, options))
    counted = InputTokens(input_tokens=len(reply.token_ids))
    return JSONResponse(counted.model_dump(mode="json"), headers=ignored)
