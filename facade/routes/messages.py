"""POST /v1/messages and POST /v1/messages/count_tokens: Anthropic's Messages API.

A Messages request is translated into the internal chat request (facade/anthropic/translate.py)
and served by the chat pipeline that /v1/chat/completions uses (facade/pipeline/chat.py:
`open_chat`, `chunk_choice`, `complete_chat`), so sampling, tools, `tool_choice`, reasoning and
limits behave exactly as on /v1/chat/completions. The answer is turned back into content
blocks; streaming emits Anthropic's event sequence (facade/anthropic/stream.py). count_tokens
renders the same chat prompt (tools included) through the core's Tokenize. Keys are checked as
on the OpenAI routes, sent as `x-api-key` or Bearer; errors are rendered in Anthropic's
envelope (facade/errors.py, `error_response` by path).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.anthropic.protocol import CountTokensRequest, CountTokensResponse, MessagesRequest
from facade.anthropic.stream import MessageRun, error_event, message_events, message_object
from facade.anthropic.translate import BlockAssembler, anthropic_params, new_id, to_chat_request
from facade.convert import chat_tokenize_request
from facade.dependencies import (
    ANTHROPIC_KEY_REQUIRED,
    CoreCallOptions,
    CoreStub,
    Settings,
    resolve_model,
)
from facade.generation import call_core
from facade.limits import Limits, check_chat_limits, check_message_count
from facade.openapi import COUNT_TOKENS_RESPONSES, MESSAGES_RESPONSES
from facade.pipeline import complete_chat, open_chat
from facade.sse import STREAM_HEADERS, EventStreamResponse, cancel_on_disconnect, guarded_stream

router = APIRouter(tags=["messages"])


@router.post(
    "/v1/messages",
    response_model=None,
    responses=MESSAGES_RESPONSES,
    dependencies=ANTHROPIC_KEY_REQUIRED,
)
async def create_message(
    body: MessagesRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """Anthropic Messages (streaming and not), served through the chat pipeline."""
    chat, origins = to_chat_request(body)
    with anthropic_params(origins):
        check_chat_limits(chat, limits)
        chat_run, generation = await open_chat(chat, request, stub, options, settings)
    show_thinking = body.thinking is None or body.thinking.shown
    run = MessageRun(request=body, chat=chat_run, message_id=new_id("msg"),
                     assembler=BlockAssembler(show_thinking))  # fmt: skip
    if body.stream:
        stream = guarded_stream(
            message_events(run, generation), generation.cancel, run.message_id,
            error_event=error_event, last_event=None,
        )  # fmt: skip
        return EventStreamResponse(stream, headers=STREAM_HEADERS)
    try:
        with anthropic_params(origins):
            completion = await cancel_on_disconnect(request, complete_chat(chat_run, generation))
    finally:
        generation.cancel()
    return JSONResponse(message_object(run, completion))


@router.post(
    "/v1/messages/count_tokens",
    response_model=None,
    responses=COUNT_TOKENS_RESPONSES,
    dependencies=ANTHROPIC_KEY_REQUIRED,
)
async def count_tokens(
    body: CountTokensRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """The tokens of the prompt a message request would send: the rendered chat prompt,
    system prompt and tools included."""
    chat, origins = to_chat_request(body)
    with anthropic_params(origins):
        check_message_count(len(chat.messages), limits)
        message = chat_tokenize_request(chat, resolve_model(chat.model, settings))
        reply = await cancel_on_disconnect(request, call_core(stub.Tokenize, message, options))
    response = CountTokensResponse(input_tokens=len(reply.token_ids))
    return JSONResponse(response.model_dump(mode="json"))
