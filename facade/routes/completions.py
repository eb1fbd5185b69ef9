"""POST /v1/completions: the endpoint; the run itself is the completions pipeline's
(facade/pipeline/completions.py: one `Generate` call per prompt, run concurrently, merged).

Choice `prompt_index * n + choice_index` is the core's choice `choice_index` of prompt
`prompt_index`; `echo`, `logprobs` and `best_of` are as the pipeline's docstring says.
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
from facade.limits import Limits, check_completion_limits
from facade.openapi import COMPLETION_RESPONSES
from facade.pipeline import complete_completion, open_completion, stream_completion
from facade.protocol import CompletionRequest
from facade.protocol_policy import apply_field_policy, apply_priority_header, ignored_header
from facade.sse import (
    STREAM_HEADERS,
    EventStreamResponse,
    cancel_on_disconnect,
    guarded_stream,
)

router = APIRouter(tags=["completions"])


@router.post(
    "/v1/completions",
    response_model=None,
    responses=COMPLETION_RESPONSES,
    dependencies=API_KEY_REQUIRED,
)
async def create_completion(
    body: CompletionRequest,
    request: Request,
    stub: CoreStub,
    options: CoreCallOptions,
    settings: Settings,
    limits: Limits,
) -> Response:
    """OpenAI (legacy) completions, streaming and not; several prompts run concurrently."""
    ignored = ignored_header(apply_field_policy(body, "completions"))
    apply_priority_header(body, request.headers)
    check_completion_limits(body, limits)
    run, generation = await open_completion(body, request, stub, options, settings)
    if body.stream:
        events = guarded_stream(
            stream_completion(run, generation), generation.cancel, run.completion_id
        )
        return EventStreamResponse(events, headers={**STREAM_HEADERS, **ignored})
    try:
        completion = await cancel_on_disconnect(request, complete_completion(run, generation))
    finally:
        generation.cancel()
    return JSONResponse(completion.model_dump(mode="json"), headers=ignored)
