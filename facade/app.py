"""The facade's app factory.

`create_app()` wires one FastAPI app: a lifespan that owns the process's single gRPC channel to
the core (round-robin over every address `core_address` resolves to) and its `InferenceStub`,
the accepted API keys (read once, the key file included), OpenTelemetry tracing when
`otlp_traces_endpoint` is set (facade/tracing.py), /openapi.json with every route's
error responses (facade/openapi.py), the middleware (request ids, metrics
and the access log, CORS when origins are configured, the body limit), the routers (GET
/metrics included), and the exception handlers that render every error —
Tandem's own, FastAPI's validation errors (422 → 400) and Starlette's HTTP errors (404, 405,
413) — as the OpenAI envelope (Anthropic's on /v1/messages, facade/routes/messages.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from facade.errors import (
    ApiError,
    api_error_from_http,
    api_error_from_validation,
    error_response,
)
from facade.metrics import FacadeMetrics, MetricsMiddleware
from facade.metrics import router as metrics_router
from facade.middleware import REQUEST_ID_HEADER, BodySizeLimitMiddleware, RequestIdMiddleware
from facade.openapi import install_openapi
from facade.responses.store import ResponseStore, make_store
from facade.routes import (
    chat,
    completions,
    embeddings,
    health,
    messages,
    models,
    rerank,
    responses,
    score,
    tokenize,
)
from facade.settings import FacadeSettings
from facade.tracing import TracingMiddleware
from tandem.v1.inference_pb2_grpc import InferenceStub

logger = logging.getLogger(__name__)

# Seconds in-flight RPCs get to finish when the facade shuts down.
CHANNEL_CLOSE_GRACE_S = 5.0
# What browsers may send and read cross-origin when CORS is on.
CORS_ALLOW_METHODS = ["GET", "POST", "DELETE"]
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", REQUEST_ID_HEADER,
                      "x-api-key", "anthropic-version", "anthropic-beta"]  # fmt: skip
CORS_EXPOSE_HEADERS = [REQUEST_ID_HEADER]
# gRPC retries of Inference RPCs that fail UNAVAILABLE before the core answered anything (a core
# draining, killed or not reachable): round_robin sends each attempt to the next core. gRPC only
# retries calls that have received no response headers, so no streamed byte is ever repeated.
RETRY_SERVICE_CONFIG = {
    "methodConfig": [{
        "name": [{"service": "tandem.v1.Inference"}],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}


def open_channel(settings: FacadeSettings) -> grpc.aio.Channel:
    """The one channel to the core(s); `dns:///svc:port` (or `ipv4:host:p1,host:p2`) balances
    per RPC over all replicas, and retries another one on UNAVAILABLE (RETRY_SERVICE_CONFIG)."""
    options = [
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)),
        ("grpc.max_send_message_length", settings.max_grpc_message_bytes),
        ("grpc.max_receive_message_length", settings.max_grpc_message_bytes),
        # No client keepalive pings: a gRPC server with default settings answers pings more
        # often than every 5 minutes with GOAWAY "too_many_pings", failing streams in flight.
    ]
    return grpc.aio.insecure_channel(settings.core_address, options=options)


def open_response_store(settings: FacadeSettings) -> ResponseStore:
    """The store of /v1/responses (facade/responses/store.py): memory unless a Redis URL is set."""
    return make_store(
        settings.responses_store_url,
        max_entries=settings.responses_store_max_entries,
        max_bytes=settings.responses_store_max_bytes,
        max_entry_bytes=settings.responses_store_max_entry_bytes,
        ttl_s=settings.responses_store_ttl_s,
        timeout_s=settings.responses_store_timeout_s,
    )


def _lifespan(
    settings: FacadeSettings,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: one gRPC channel + stub for the process, closed on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channel = open_channel(settings)
        app.state.channel = channel
        app.state.stub = InferenceStub(channel)
        app.state.responses_store = open_response_store(settings)
        logger.info("facade routing to core at %s", settings.core_address)
        try:
            yield
        finally:
            app.state.stub = None
            app.state.channel = None
            await app.state.responses_store.close()
            await channel.close(grace=CHANNEL_CLOSE_GRACE_S)

    return lifespan


async def _on_api_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    if error.status_code in (499, 500, 501, 504):  # 503s are logged where they arise
        logger.info("request %s failed: %r", getattr(request.state, "request_id", "?"), error)
    return error_response(error, request.url.path)


async def _on_validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return error_response(api_error_from_validation(list(error.errors())), request.url.path)


async def _on_http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    route = f"{request.method} {request.url.path}"
    api_error = api_error_from_http(error.status_code, str(error.detail), error.headers, route)
    return error_response(api_error, request.url.path)


def create_app(settings: FacadeSettings | None = None) -> FastAPI:
    """Build the facade app; its lifespan opens the core channel, so run it under an ASGI server."""
    settings = settings or FacadeSettings()
    app = FastAPI(
        title="Tandem",
        summary="OpenAI-compatible API in front of Tandem model cores.",
        lifespan=_lifespan(settings),
    )
    app.state.settings = settings
    app.state.api_keys = settings.accepted_api_keys()
    if settings.metrics_require_auth and not app.state.api_keys:
        raise ValueError("TANDEM_METRICS_REQUIRE_AUTH is set but no API keys are configured")
    app.state.metrics = FacadeMetrics()
    # The last added runs first: request id → tracing (when on) → metrics/access log → CORS →
    # body limit → routes, so every response (a CORS preflight, a 413) is measured and carries
    # x-request-id.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=CORS_ALLOW_METHODS,
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.otlp_traces_endpoint:  # OpenTelemetry is imported only then
        from tandem.tracing import start_tracing

        tracer = start_tracing("tandem-facade", settings.otlp_traces_endpoint)
        app.add_middleware(TracingMiddleware, tracer=tracer)
        logger.info("exporting traces to %s", settings.otlp_traces_endpoint)
    app.add_middleware(RequestIdMiddleware)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    for module in (chat, completions, responses, messages, embeddings, score, rerank, tokenize,
                   models, health):  # fmt: skip
        app.include_router(module.router)
    app.include_router(metrics_router)
    install_openapi(app)
    return app
