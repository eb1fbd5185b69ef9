"""The facade's OpenTelemetry tracing: one SERVER span per HTTP request, and the trace context
sent on to the core in each call's gRPC metadata.

Owns `TracingMiddleware` (installed by `create_app()` only when `otlp_traces_endpoint` is set;
pure ASGI, so a stream's span lasts until its last byte) and `trace_metadata()`, the
`traceparent` / `tracestate` pairs of a request's core calls (facade/dependencies.py puts them
in `CallOptions`). A client's incoming `traceparent` continues its trace: the request's span is
its child. Span: `<METHOD> <route>`, with `http.request.method`, `url.path`, `http.route`,
`http.response.status_code`, `tandem.request_id`, `tandem.stream` (a text/event-stream answer)
and `gen_ai.request.model` / `gen_ai.response.model` (set by facade/generation.py's calls);
5xx answers mark it failed.

With tracing off nothing here imports OpenTelemetry: a request's valid `traceparent` (and
`tracestate`) is forwarded to the core unchanged (`tandem.tracing.trace_headers`), so the core
still logs the client's trace id.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facade.logs import request_id_var
from tandem.logs import trace_id_var
from tandem.tracing import trace_headers

SPAN_STATE = "otel_span"  # where the middleware keeps the request's span (request.state)


def request_span(request: Request) -> Any:
    """The request's span (None when tracing is off)."""
    return getattr(request.state, SPAN_STATE, None)


def trace_metadata(request: Request) -> tuple[tuple[str, str], ...]:
    """The W3C trace context of the request's core calls: its own span's when tracing is on,
    else the client's `traceparent` / `tracestate` as they came (none when absent or invalid)."""
    span = request_span(request)
    if span is None:
        return trace_headers(request.headers.get)
    from opentelemetry.trace import set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
    return tuple(carrier.items())


class TracingMiddleware:
    """Opens, annotates and ends one SERVER span per HTTP request."""

    def __init__(self, app: ASGIApp, tracer: Any) -> None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app = app
        self.tracer = tracer
        self.propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import context as otel_context
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        method = scope["method"]
        span = self.tracer.start_span(
            method, kind=SpanKind.SERVER, context=self.propagator.extract(Headers(scope=scope)),
            attributes={"http.request.method": method, "url.path": scope["path"],
                        "tandem.request_id": request_id_var.get() or ""})
        scope.setdefault("state", {})[SPAN_STATE] = span
        context_token = otel_context.attach(set_span_in_context(span))
        trace_token = trace_id_var.set(format(span.get_span_context().trace_id, "032x"))
        answer = {"status": 0, "stream": False}

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                content_type = Headers(raw=message.get("headers", [])).get("content-type", "")
                answer["stream"] = content_type.startswith("text/event-stream")
            await send(message)

        try:
            await self.app(scope, receive, send_traced)
        except Exception as error:
            span.record_exception(error)
            answer["status"] = answer["status"] or 500
            raise
        except BaseException:  # cancelled: the client went away
            answer["status"] = answer["status"] or 499
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            if isinstance(route, str):
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
            span.set_attributes({"http.response.status_code": answer["status"],
                                 "tandem.stream": answer["stream"]})
            if answer["status"] >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {answer['status']}"))
            span.end()
            trace_id_var.reset(trace_token)
            otel_context.detach(context_token)
