"""POST /v1/chat/completions: the endpoint; the run itself is the chat pipeline's
(facade/pipeline/chat.py: one `Generate` call with chat input, streamed or aggregated).

Streaming: the core's first response is awaited before the first SSE byte; then a role chunk per
choice, one chunk per core response, an optional usage chunk (`choices: []`), `data: [DONE]`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from facade.dependencies import (
    API_KEY_REQUIRED,
    CoreCallOptions,
    CoreStub,
    Settings,
)
from facade.limits import Limits, check_chat_limits
from facade.openapi import CHAT_RESPONSES
from facade.pipeline import complete_chat, open_chat, stream_chat
from facade.protocol import ChatCompletionRequest
from facade.protocol_policy import apply_field_policy, apply_priority_header, ignored_header
from facade.sse import (
    STREAM_HEADERS,
    EventStreamResponse,
    cancel_on_disconnect,
    guarded_stream,
)

router = APIRouter(tags=["chat"])


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=CHAT_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """OpenAI chat completions (streaming and not)."""
    ignored = ignored_header(apply_field_policy(body, "chat"))
    apply_priority_header(body, request.headers)
    check_chat_limits(body, limits)
    run, generation = await open_chat(body, request, stub, options, settings)
    if body.stream:
        events = guarded_stream(stream_chat(run, generation), generation.cancel, run.completion_id)
        return EventStreamResponse(events, headers={**STREAM_HEADERS, **ignored})
    try:
        completion = await cancel_on_disconnect(request, complete_chat(run, generation))
    finally:
        generation.cancel()
    return JSONResponse(completion.model_dump(mode="json"), headers=ignored)
