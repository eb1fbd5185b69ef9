"""What /openapi.json says about each route's responses, built in one place.

Owns the `responses=` dicts the routes declare — the OpenAI error envelope (`ErrorResponse`)
for every status a route can answer with (docs/architecture.md, "One error table"), the
`text/event-stream`
form of a streamed 200 — and `install_openapi()`, which finishes FastAPI's generated document:

- FastAPI's default 422 is dropped (the app answers validation errors with a 400 envelope);
- the streamed chunk models are added to `components/schemas` (the per-event schema refers to
  them);
- GET /metrics (a Prometheus text page, hidden from FastAPI's generator) is described.

A `text/event-stream` schema describes one event (OpenAPI < 3.2; Schemathesis reads it so):
its `data` is `[DONE]` or a JSON chunk or, after the stream started, an error envelope.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from facade.anthropic.protocol import AnthropicErrorResponse, CountTokensResponse, MessageObject
from facade.bodies import (
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    ModelCard,
    ModelList,
)
from facade.errors import ErrorResponse
from facade.protocol_extra import (
    DetokenizeResponse,
    EmbeddingResponse,
    ScoringResponse,
    TokenizeResponse,
)
from facade.protocol_rerank import RerankResponse, RerankV2Response, ScoreTextsResponse
from facade.responses.protocol import (
    DeletedResponse,
    InputItemList,
    InputTokens,
    ResponseObject,
    ResponseStreamEvent,
)

REF_PREFIX = "#/components/schemas/"

# One response description per status the facade can answer with an error envelope.
_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Invalid request: malformed JSON, a missing, bad or unsupported parameter, or prompt + "
    "max_tokens over the model's context (code invalid_json, missing_required_parameter, "
    "invalid_value, unsupported_parameter or context_length_exceeded).",
    401: "Missing or wrong API key (only when the facade has keys configured; code "
    "invalid_api_key).",
    404: "The model does not exist (code model_not_found).",
    413: "The request body is larger than the facade accepts (code request_too_large).",
    429: "The core is overloaded; retry after `Retry-After` seconds (code overloaded).",
    499: "The request was cancelled: the client went away (logged; type cancelled).",
    500: "A bug in the facade or the core (code internal_error).",
    501: "The core does not implement what was asked (code not_implemented); do not retry.",
    503: "No core is reachable or ready (code service_unavailable); retry.",
    504: "The core did not finish within the request deadline (code timeout).",
}


def _header(description: str, schema: dict[str, Any], required: bool) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_SHOULD_RETRY = "Tells OpenAI SDKs whether to retry."
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": _header("`Bearer`.", {"type": "string"}, True)},
    429: {"Retry-After": _header("Seconds to wait.", {"type": "integer"}, True)},
    501: {"x-should-retry": _header(_SHOULD_RETRY, {"type": "string", "enum": ["false"]}, True)},
    503: {
        "x-should-retry": _header(_SHOULD_RETRY, {"type": "string", "enum": ["true"]}, True),
        "Retry-After": _header("Seconds to wait, when the core said.", {"type": "integer"}, False),
    },
}

# The statuses any call to the core can end in, whatever the request.
_CORE_FAILURES = (429, 500, 501, 503, 504)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries: the error envelope for each of `statuses`."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(statuses):
        response: dict[str, Any] = {
            "model": ErrorResponse,
            "description": _ERROR_DESCRIPTIONS[status],
        }
        if status in _ERROR_HEADERS:
            response["headers"] = _ERROR_HEADERS[status]
        responses[status] = response
    return responses


def _event_stream(chunk: type[BaseModel]) -> dict[str, Any]:
    """The `text/event-stream` media type of a streamed 200 whose events carry `chunk`."""
    payload = {
        "anyOf": [{"$ref": REF_PREFIX + chunk.__name__}, {"$ref": REF_PREFIX + "ErrorResponse"}]
    }
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "if": {"const": "[DONE]"},
                "else": {"contentMediaType": "application/json", "contentSchema": payload},
            }
        },
    }
    return {"schema": event}


def generation_responses(
    result: type[BaseModel], chunk: type[BaseModel]
) -> dict[int | str, dict[str, Any]]:
    """A generation route: JSON `result` or a stream of `chunk`s, and every error it can end in."""
    ok = {
        "model": result,
        "description": f"`{result.__name__}`; with `stream: true`, server-sent events "
        f"`data: <{chunk.__name__}>`, an error after the first event as "
        "`data: <ErrorResponse>`, and last `data: [DONE]` (the event-stream schema describes "
        "one event).",
        "content": {"text/event-stream": _event_stream(chunk)},
    }
    return {200: ok, **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES)}


class ProbeStatus(BaseModel):
    """The body of a successful health probe."""

    status: str = Field(
        description='"ok" (GET /health, GET /health/generate) or "ready" (GET /ready).')


CHAT_RESPONSES = generation_responses(ChatCompletion, ChatCompletionChunk)
COMPLETION_RESPONSES = generation_responses(Completion, CompletionChunk)
# Unary routes that run one core call with the request's body: every error a body or a core can
# cause.
EMBEDDING_RESPONSES = {
    200: {
        "model": EmbeddingResponse,
        "description": "One embedding per input, in input order: float lists, or base64 strings "
        "of little-endian float32 with `encoding_format: base64`.",
    },
    **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES),
}
SCORE_RESPONSES = {
    200: {
        "model": ScoringResponse | ScoreTextsResponse,
        "description": "SGLang's form: per item, one score per label token id (request order). "
        "vLLM's cross-encoder form (a body with `text_1`): one score per pair, in pair order.",
    },
    **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES),
}
RERANK_RESPONSES = {
    200: {
        "model": RerankResponse,
        "description": "The documents by relevance to the query, best first (at most top_n).",
    },
    **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES),
}
RERANK_V2_RESPONSES = {
    200: {
        "model": RerankV2Response,
        "description": "Cohere v2's shape: the documents by relevance, best first.",
    },
    **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES),
}
SCORE_TEXTS_RESPONSES = {
    200: {
        "model": ScoreTextsResponse,
        "description": "One cross-encoder score per (text_1, text_2) pair, in pair order.",
    },
    **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES),
}
MODEL_LIST_RESPONSES = {
    200: {"model": ModelList, "description": "Every model the core serves."},
    **error_responses(401, *_CORE_FAILURES),
}
MODEL_RESPONSES = {
    200: {"model": ModelCard, "description": "The model."},
    **error_responses(401, 404, *_CORE_FAILURES),
}
# /v1/responses: JSON or a stream of named events (`event: <type>` + `data: <event>`; no
# [DONE]); its 404 also covers an unknown previous_response_id, its 503 a response store that
# is down.
_RESPONSE_404 = {
    "model": ErrorResponse,
    "description": "The model does not exist (code model_not_found), or the response named by "
    "the path or by previous_response_id is unknown, expired or deleted (code "
    "response_not_found).",
}
_STORE_503 = {
    **error_responses(503)[503],
    "description": "No core is reachable or ready, or the response store (Redis) is down "
    "(code service_unavailable); retry.",
}
RESPONSES_RESPONSES = {
    200: {
        "model": ResponseObject,
        "description": "The response; with `stream: true`, server-sent events `event: <type>` + "
        "`data: <ResponseStreamEvent>` from `response.created` to `response.completed`, "
        "`response.incomplete`, or (after an `error` event) `response.failed`.",
        "content": {"text/event-stream": {"schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": REF_PREFIX + "ResponseStreamEvent"},
            }},
        }}},
    },
    **error_responses(400, 401, 413, 499, *_CORE_FAILURES),
    404: _RESPONSE_404,
    503: _STORE_503,
}
# /v1/messages, /v1/messages/count_tokens: Anthropic's envelope, and its status codes (a core
# that is overloaded or unavailable is 529).
_ANTHROPIC_ERRORS = {
    400: "Invalid request (type invalid_request_error).",
    401: "Missing or wrong API key, sent as x-api-key or Bearer (type authentication_error).",
    404: "The model does not exist (type not_found_error).",
    413: "The request body is larger than the facade accepts (type request_too_large).",
    499: "The request was cancelled: the client went away (logged).",
    500: "A bug in the facade or the core (type api_error).",
    501: "The core does not implement what was asked (type api_error).",
    504: "The core did not finish within the request deadline (type api_error).",
    529: "The core is overloaded or no core is ready; retry (type overloaded_error).",
}
ANTHROPIC_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": AnthropicErrorResponse, "description": description}
    for status, description in _ANTHROPIC_ERRORS.items()
}
MESSAGES_RESPONSES = {
    200: {
        "model": MessageObject,
        "description": "The message; with `stream: true`, server-sent events `event: <type>` + "
        "`data: <json>` from `message_start` to `message_stop` (an error after the first "
        "event: an `error` event, and the stream ends).",
        "content": {"text/event-stream": {"schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "string", "contentMediaType": "application/json"}},
        }}},
    },
    **ANTHROPIC_ERROR_RESPONSES,
}
COUNT_TOKENS_RESPONSES = {
    200: {"model": CountTokensResponse, "description": "The prompt's tokens (tools included)."},
    **ANTHROPIC_ERROR_RESPONSES,
}
RESPONSE_GET_RESPONSES = {
    200: {"model": ResponseObject, "description": "The stored response, as it was returned."},
    **error_responses(401),
    404: _RESPONSE_404,
    503: _STORE_503,
}
RESPONSE_INPUT_ITEMS_RESPONSES = {
    200: {"model": InputItemList, "description": "A page of the stored response's input items."},
    **error_responses(400, 401),
    404: _RESPONSE_404,
    503: _STORE_503,
}
INPUT_TOKENS_RESPONSES = {
    200: {"model": InputTokens, "description": "The input tokens of the Responses request."},
    **error_responses(400, 401, 413, 499, *_CORE_FAILURES),
    404: _RESPONSE_404,
    503: _STORE_503,
}
RESPONSE_DELETE_RESPONSES = {
    200: {"model": DeletedResponse, "description": "The response was removed."},
    **error_responses(401),
    404: _RESPONSE_404,
    503: _STORE_503,
}
TOKENIZE_RESPONSES = {
    200: {"model": TokenizeResponse, "description": "The token ids of the prompt or messages."},
    **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES),
}
DETOKENIZE_RESPONSES = {
    200: {"model": DetokenizeResponse, "description": "The text of the token ids."},
    **error_responses(400, 401, 404, 413, 499, *_CORE_FAILURES),
}
READY_RESPONSES = {
    200: {"description": "The core reports SERVING."},  # body: ProbeStatus
    **error_responses(503),
}

# Models only the event streams refer to: FastAPI's generator never sees them.
_STREAM_MODELS: tuple[type[BaseModel], ...] = (
    ChatCompletionChunk,
    CompletionChunk,
    ResponseStreamEvent,
)

_METRICS_PATH = {
    "get": {
        "tags": ["metrics"],
        "summary": "Metrics",
        "description": "The facade's Prometheus metrics (text exposition format). Needs an API "
        "key only when TANDEM_METRICS_REQUIRE_AUTH is set.",
        "operationId": "metrics_metrics_get",
        "responses": {
            "200": {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            "401": {
                "description": _ERROR_DESCRIPTIONS[401],
                "headers": _ERROR_HEADERS[401],
                "content": {"application/json": {"schema": {"$ref": REF_PREFIX + "ErrorResponse"}}},
            },
            "500": {
                "description": _ERROR_DESCRIPTIONS[500],
                "content": {"application/json": {"schema": {"$ref": REF_PREFIX + "ErrorResponse"}}},
            },
        },
    }
}


def finish_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Finish FastAPI's generated document in place (see the module docstring)."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    _, stream_schemas = models_json_schema(
        [(model, "serialization") for model in _STREAM_MODELS],
        ref_template=REF_PREFIX + "{model}",
    )
    for name, definition in stream_schemas.get("$defs", {}).items():
        components.setdefault(name, definition)
    schema["paths"].setdefault("/metrics", _METRICS_PATH)
    for unused in ("HTTPValidationError", "ValidationError"):
        if f'"{REF_PREFIX}{unused}"' not in json.dumps(schema):
            components.pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Have `app` serve the finished document at /openapi.json (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish_schema(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
