"""One RPC's trace: the W3C trace context read from gRPC metadata, and the RPC's span.

Owns `RpcTrace`: at the start of an RPC it reads `traceparent` (and `tracestate`) from the
call's metadata and sets the trace id for the RPC's log lines (`tandem.logs.trace_id_var`, so
the core's request log line names the trace even with tracing off). When the core exports spans
(`tandem core --otlp-traces-endpoint`, tandem/tracing.py) it also opens a SERVER span named
`tandem.v1.Inference/<Method>`, a child of the caller's span, with the attributes:

  rpc.system "grpc", rpc.service, rpc.method, tandem.request_id,
  gen_ai.request.model / gen_ai.response.model, gen_ai.usage.input_tokens (prompt tokens),
  gen_ai.usage.output_tokens (completion tokens), gen_ai.response.finish_reasons,
  rpc.grpc.status_code / error.type when the RPC fails.

With tracing off no OpenTelemetry code runs: every method is a cheap no-op past the metadata read.
"""

from __future__ import annotations

from typing import Any

import grpc

from tandem.logs import trace_id_var
from tandem.tracing import TRACEPARENT, TRACESTATE, parse_traceparent, tracer
from tandem.v1 import inference_pb2 as pb

SERVICE = "tandem.v1.Inference"
FINISH_REASON_NAMES = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length",
                       pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
                       pb.FINISH_REASON_ABORT: "abort"}


class RpcTrace:
    """The trace of one RPC; use as a context manager around the RPC's work."""

    def __init__(self, context: grpc.aio.ServicerContext, method: str, request_id: str) -> None:
        metadata = dict(context.invocation_metadata() or ())
        parent = metadata.get(TRACEPARENT)
        self.trace_id = parse_traceparent(parent)
        if self.trace_id is not None:
            trace_id_var.set(self.trace_id)
        self._span: Any = None
        self._failed = False
        self._finish_reasons: dict[int, str] = {}
        active = tracer()
        if active is None:
            return
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {TRACEPARENT: parent} if parent else {}
        if parent and metadata.get(TRACESTATE):
            carrier[TRACESTATE] = metadata[TRACESTATE]
        self._span = active.start_span(
            f"{SERVICE}/{method}", kind=SpanKind.SERVER,
            context=TraceContextTextMapPropagator().extract(carrier),
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method,
                        "tandem.request_id": request_id})
        self.trace_id = format(self._span.get_span_context().trace_id, "032x")
        trace_id_var.set(self.trace_id)

    def __enter__(self) -> RpcTrace:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._span is None:
            return
        if error is not None and not self._failed and not isinstance(error, GeneratorExit):
            self.fail(error)
        if self._finish_reasons:
            reasons = [self._finish_reasons[index] for index in sorted(self._finish_reasons)]
            self._span.set_attribute("gen_ai.response.finish_reasons", reasons)
        self._span.end()

    def set(self, attributes: dict[str, Any]) -> None:
        """Set span attributes (those whose value is None are left out)."""
        if self._span is not None:
            self._span.set_attributes({key: value for key, value in attributes.items()
                                       if value is not None})

    def fail(self, error: BaseException, code: grpc.StatusCode | None = None) -> None:
        """Mark the span failed with `error` (its gRPC status code when known)."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self._failed = True
        self._span.set_attribute("error.type", type(error).__name__)
        if code is not None:
            self._span.set_attribute("rpc.grpc.status_code", code.value[0])
        self._span.set_status(Status(StatusCode.ERROR, str(error)[:200]))

    def record_chunk(self, response: pb.GenerateResponse) -> None:
        """Note one Generate chunk: its cumulative usage and the choices it finishes."""
        if self._span is None:
            return
        for choice in response.choices:
            name = FINISH_REASON_NAMES.get(choice.finish_reason)
            if name is not None:
                self._finish_reasons[choice.index] = name
        if response.HasField("usage"):
            self._record_usage(response.usage)

    def record_reply(self, request: Any, reply: Any) -> None:
        """Note a unary RPC's reply: its model and usage (Tokenize: its token count)."""
        if self._span is None:
            return
        model = getattr(reply, "model", "") or getattr(request, "model", "")
        self.set({"gen_ai.request.model": getattr(request, "model", "") or None,
                  "gen_ai.response.model": model or None})
        if isinstance(reply, pb.TokenizeResponse):
            self._span.set_attribute("gen_ai.usage.input_tokens", len(reply.token_ids))
        elif hasattr(reply, "usage") and reply.HasField("usage"):
            self._record_usage(reply.usage)

    def _record_usage(self, usage: pb.Usage) -> None:
        self._span.set_attributes({"gen_ai.usage.input_tokens": usage.prompt_tokens,
                                   "gen_ai.usage.output_tokens": usage.completion_tokens,
                                   "tandem.usage.cached_tokens": usage.cached_tokens})

