"""The facade's Prometheus metrics, the middleware that measures every request, and GET /metrics.

Owns `FacadeMetrics` (its own `CollectorRegistry`, one per app, so tests can build many apps),
`MetricsMiddleware` and the `/metrics` router. The middleware is pure ASGI — it sees each
`http.response.body` message as it is sent, so the time to first byte of an SSE response is the
time of its first event, and a stream counts as in flight until its last byte — and it also
writes the one access-log line per request (logger `facade.access`).

  tandem_facade_requests_total{route,method,status}        counter
  tandem_facade_request_duration_seconds{route}            histogram (until the last byte)
  tandem_facade_time_to_first_byte_seconds{route}          histogram (until the first body byte)
  tandem_facade_streams_in_flight                          gauge (text/event-stream responses)
  tandem_facade_errors_total{code}                         counter (OpenAI error `code`)

Probe answers are requests, not errors: a `/ready` 503 while the core warms up (or drains) is
the state the probe exists to report, so `PROBE_PATHS` count in `requests_total` only.

`route` is the matched route's template (`/v1/chat/completions`), or `UNMATCHED_ROUTE` for paths
no route knows, so that no label grows with what clients send. `code` is read from the error
envelope of a 4xx/5xx JSON body, or from an in-stream `data: {"error": ...}` event (on the
Messages API: the Anthropic envelope's error `type`, from the body or the `error` event).
"""

from __future__ import annotations

import json
import logging
import re
import time

from fastapi import APIRouter, Depends, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facade.dependencies import require_metrics_auth

access_logger = logging.getLogger("facade.access")

# The `route` label of requests no route matched (404s, CORS preflights).
UNMATCHED_ROUTE = "unmatched"
# Methods that keep their name as a label; anything else is "other".
KNOWN_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
# Error codes that become a label as-is; anything else (never expected) is "other".
_SANE_CODE = re.compile(r"[a-z0-9_]{1,48}")
# Largest error body the middleware reads to find its `code`.
MAX_ERROR_BODY_BYTES = 64 * 1024
# Paths whose access lines are DEBUG, not INFO (probes and scrapes would drown the log).
QUIET_PATHS = frozenset({"/health", "/ready", "/health/generate", "/metrics"})
# Liveness and readiness probes: their 503 is an answer, never counted in errors_total.
PROBE_PATHS = frozenset({"/health", "/ready", "/health/generate"})
# An in-stream error event, as facade/sse.py writes it.
_SSE_ERROR_PREFIX = b'data: {"error":'
# ... and of the Messages API's (facade/anthropic/stream.py): its data follows.
_ANTHROPIC_SSE_ERROR_PREFIX = b"event: error\ndata: "

# Histogram buckets: generations run for minutes, first bytes should come in well under one.
DURATION_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_BYTE_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class FacadeMetrics:
    """The facade's instruments, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tandem_facade_requests", "HTTP requests answered.",
            ["route", "method", "status"], registry=self.registry,
        )  # fmt: skip
        self.request_duration = Histogram(
            "tandem_facade_request_duration_seconds", "Request start to last response byte.",
            ["route"], buckets=DURATION_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.time_to_first_byte = Histogram(
            "tandem_facade_time_to_first_byte_seconds",
            "Request start to the first response body byte (an SSE stream's first event).",
            ["route"], buckets=FIRST_BYTE_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.streams_in_flight = Gauge(
            "tandem_facade_streams_in_flight", "Server-sent-event responses being streamed.",
            registry=self.registry,
        )  # fmt: skip
        self.errors = Counter(
            "tandem_facade_errors", "Error responses and in-stream errors, by OpenAI error code.",
            ["code"], registry=self.registry,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)


def route_label(scope: Scope) -> str:
    """The template of the route that handled the request, else UNMATCHED_ROUTE."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def error_code_label(body: bytes) -> str:
    """The `code` of an OpenAI error envelope, or the `type` of Anthropic's (which has no code)
    ("none" when null, "other" when unreadable)."""
    try:
        envelope = json.loads(body)
        code = envelope["error"].get("code")
        if envelope.get("type") == "error" and "code" not in envelope["error"]:
            code = envelope["error"].get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        return "other"
    if code is None:
        return "none"
    return code if isinstance(code, str) and _SANE_CODE.fullmatch(code) else "other"


class _Exchange:
    """What the middleware learns about one request while its response goes out."""

    def __init__(self) -> None:
        self.start_s = time.perf_counter()
        self.status = 0  # HTTP status; 0 until the response starts
        self.first_byte_s: float | None = None  # seconds from start to the first body byte
        self.is_stream = False  # a text/event-stream response
        self.error_body: bytearray | None = None  # a JSON error body being collected
        self.stream_error_codes: list[str] = []  # codes of in-stream error events


class MetricsMiddleware:
    """Measures every HTTP request into `metrics` and writes its access-log line."""

    def __init__(self, app: ASGIApp, metrics: FacadeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange()

        async def send_measured(message: Message) -> None:
            self._observe(scope, exchange, message)
            await send(message)

        try:
            await self.app(scope, receive, send_measured)
        except Exception:
            if exchange.status == 0:
                exchange.status = 500  # the request-id middleware renders the 500 envelope
                self.metrics.errors.labels("internal_error").inc()
            raise
        except BaseException:  # cancelled: the client went away
            exchange.status = exchange.status or 499
            raise
        finally:
            if exchange.is_stream:
                self.metrics.streams_in_flight.dec()
                exchange.is_stream = False
            self._finish(scope, exchange)

    def _observe(self, scope: Scope, exchange: _Exchange, message: Message) -> None:
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
            content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
            if content_type.startswith("text/event-stream"):
                exchange.is_stream = True
                self.metrics.streams_in_flight.inc()
            elif (exchange.status >= 400 and content_type.startswith("application/json")
                  and scope["path"] not in PROBE_PATHS):
                exchange.error_body = bytearray()
            return
        if message["type"] != "http.response.body":
            return
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if exchange.first_byte_s is None and (body or not more_body):
            exchange.first_byte_s = time.perf_counter() - exchange.start_s
            self.metrics.time_to_first_byte.labels(route_label(scope)).observe(
                exchange.first_byte_s
            )
        if exchange.is_stream and body.startswith(_SSE_ERROR_PREFIX):
            code = error_code_label(body.removeprefix(b"data: ").strip())
            exchange.stream_error_codes.append(code)
        elif exchange.is_stream and body.startswith(_ANTHROPIC_SSE_ERROR_PREFIX):
            code = error_code_label(body.removeprefix(_ANTHROPIC_SSE_ERROR_PREFIX).strip())
            exchange.stream_error_codes.append(code)
        if exchange.error_body is not None:
            if len(exchange.error_body) + len(body) <= MAX_ERROR_BODY_BYTES:
                exchange.error_body += body
            if not more_body:
                self.metrics.errors.labels(error_code_label(bytes(exchange.error_body))).inc()
                exchange.error_body = None
        if exchange.is_stream and not more_body:
            self.metrics.streams_in_flight.dec()
            exchange.is_stream = False

    def _finish(self, scope: Scope, exchange: _Exchange) -> None:
        duration_s = time.perf_counter() - exchange.start_s
        route = route_label(scope)
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
        self.metrics.requests.labels(route, method, str(exchange.status)).inc()
        self.metrics.request_duration.labels(route).observe(duration_s)
        for code in exchange.stream_error_codes:
            self.metrics.errors.labels(code).inc()
        path = scope["path"]
        access_logger.log(
            logging.DEBUG if path in QUIET_PATHS else logging.INFO,
            "%s %s %d",
            scope["method"],
            path,
            exchange.status,
            extra={
                "method": scope["method"],
                "path": path,
                "route": route,
                "status": exchange.status,
                "duration_ms": round(duration_s * 1000, 3),
                "first_byte_ms": None
                if exchange.first_byte_s is None
                else round(exchange.first_byte_s * 1000, 3),
            },
        )


router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_metrics_auth)])
async def metrics(request: Request) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
