"""OpenTelemetry tracing set-up shared by the core and the facade (stdlib-only at import).

Owns `start_tracing()` (one process-wide TracerProvider exporting through OTLP over HTTP with
protobuf bodies, `opentelemetry-exporter-otlp-proto-http`, in batches), `tracer()` (None until
tracing was started: callers skip every OpenTelemetry call then), `otlp_traces_url()` (the
endpoint rule) and `parse_traceparent()`, a cheap W3C `traceparent` reader the core uses to log
the caller's trace id even when its own exporter is off.

Nothing from `opentelemetry` is imported until `start_tracing()` runs, so a process started
without `--otlp-traces-endpoint` pays no import cost and runs no OpenTelemetry code.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's path for traces, added to an endpoint given without one
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# version 00: 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>; all-zero ids invalid
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
MAX_TRACESTATE_CHARS = 512  # W3C: at most 32 members; longer values are dropped, not forwarded

_tracer: Any = None  # the process's opentelemetry Tracer once start_tracing() ran


def otlp_traces_url(endpoint: str) -> str:
    """The URL spans are POSTed to: `endpoint` as given when it has a path, else with
    `/v1/traces` added (so `http://collector:4318` works as it does for other OTLP clients)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the OTLP traces endpoint must be an http(s) URL, not {endpoint!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path=TRACES_PATH)
    return urlunsplit(parts)


def start_tracing(service_name: str, endpoint: str) -> Any:
    """Install a TracerProvider for this process that batches spans to `endpoint` (OTLP/HTTP);
    returns its tracer. `OTEL_SERVICE_NAME` overrides `service_name`; the batch processor reads
    its usual `OTEL_BSP_*` variables (e.g. OTEL_BSP_SCHEDULE_DELAY, milliseconds).

    The provider is Tandem's own, not OpenTelemetry's global one: FastAPI's built-in telemetry
    (which follows the global provider) stays off, so a request has one server span, ours."""
    global _tracer
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                or service_name})
    provider = TracerProvider(resource=resource)  # flushes its spans at interpreter exit
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=otlp_traces_url(endpoint))))
    _tracer = provider.get_tracer("tandem")
    return _tracer


def tracer() -> Any:
    """The process's tracer, or None when tracing is off."""
    return _tracer


def parse_traceparent(value: str | None) -> str | None:
    """The trace id of a valid W3C `traceparent` header value, else None."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None or match[1] == "ff":
        return None
    if match[2] == _ZERO_TRACE_ID or match[3] == _ZERO_SPAN_ID:
        return None
    return match[2]


def trace_headers(get: Any) -> tuple[tuple[str, str], ...]:
    """`traceparent` (and `tracestate`) read with `get(name)`, when the traceparent is valid:
    the pair of headers as they are forwarded unchanged by a hop that does not trace itself."""
    parent = get(TRACEPARENT)
    if parse_traceparent(parent) is None:
        return ()
    headers = [(TRACEPARENT, parent.strip())]
    state = get(TRACESTATE)
    if state and len(state) <= MAX_TRACESTATE_CHARS and state.isprintable():
        headers.append((TRACESTATE, state.strip()))
    return tuple(headers)
