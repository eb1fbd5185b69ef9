"""OpenTelemetry tracing across the facade and the core, with real processes: `tandem serve
--otlp-traces-endpoint` (tiny Llama) exports to an OTLP/HTTP receiver running in this test
process (a real HTTP server; the bodies are decoded with opentelemetry-proto).

Checks: a chat completion gives a facade span and a core span in one trace, the core's parent
being the facade's span; a client's incoming `traceparent` keeps its trace id (and its
`tracestate` reaches the core); the spans carry route, model, status, stream, token counts,
finish reason and request id; the core's request log line names the trace; a unary RPC
(Tokenize) is traced with its token count, and a failed RPC's span carries its error while the
facade's span of the 404 does not count as a server failure.
"""

from __future__ import annotations

import gzip
import json
import secrets
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tandem.tracing import otlp_traces_url, parse_traceparent, trace_headers
from tests.conftest import (
    SERVER_ENGINE_FLAGS,
    core_env,
    free_port,
    retry_on_taken_port,
    stop_process,
    wait_for_http,
)
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 4}
EXPORT_WAIT_S = 30  # a deadline only: spans leave in batches every OTEL_BSP_SCHEDULE_DELAY


class OtlpReceiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []  # (service.name, span)
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.add(self.path, ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, export: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.paths.append(path)
            for resource_spans in export.resource_spans:
                service = attributes(resource_spans.resource.attributes)["service.name"]
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(service, span) for span in scope_spans.spans]

    def find(self, service: str, name: str, trace_id: str) -> Span | None:
        with self._lock:
            return next((span for svc, span in self.spans if svc == service
                         and span.name == name and span.trace_id.hex() == trace_id), None)

    def wait_for(self, service: str, name: str, trace_id: str) -> Span:
        return wait_until(lambda: self.find(service, name, trace_id),
                          f"a {service} span {name!r} in trace {trace_id}", EXPORT_WAIT_S)


def attributes(pairs) -> dict:
    """OTLP KeyValues as a dict of Python values."""
    def value(any_value):
        kind = any_value.WhichOneof("value")
        if kind == "array_value":
            return [value(item) for item in any_value.array_value.values]
        return getattr(any_value, kind)

    return {pair.key: value(pair.value) for pair in pairs}


@pytest.fixture(scope="module")
def receiver():
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def traced_server(tiny_models, receiver, tmp_path_factory):
    """`tandem serve` exporting both processes' spans to `receiver` (endpoint without a path:
    /v1/traces is added). SERVER_ENGINE_FLAGS and core_env(): its buckets load from the store."""
    log_dir = tmp_path_factory.mktemp("tracing")

    def start():
        http_port, grpc_port = free_port(), free_port()
        log_path = log_dir / f"serve-{http_port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "serve", "--model", str(tiny_models["llama"]),
                 "--served-model-name", MODEL, "--port", str(http_port),
                 "--grpc-port", str(grpc_port), *SERVER_ENGINE_FLAGS,
                 "--embedding-model", "none",
                 "--otlp-traces-endpoint", f"http://127.0.0.1:{receiver.port}"],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                env=core_env(OTEL_BSP_SCHEDULE_DELAY="50"))  # ms; OTEL_*: no new bucket keys
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_for_http(f"{base}/ready", process, log_path, timeout_s=480)
        except BaseException:
            stop_process(process)
            raise
        return base, process, log_path

    base, process, log_path = retry_on_taken_port(start)
    try:
        yield base, log_path
    finally:
        stop_process(process)


def test_a_chat_completion_is_one_trace_from_the_client_through_the_core(traced_server,
                                                                         receiver):
    base, log_path = traced_server
    trace_id, client_span_id = secrets.token_hex(16), secrets.token_hex(8)
    reply = httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=60, headers={
        "traceparent": f"00-{trace_id}-{client_span_id}-01", "tracestate": "client=7"})
    assert reply.status_code == 200, reply.text
    body, request_id = reply.json(), reply.headers["x-request-id"]

    facade = receiver.wait_for("tandem-facade", "POST /v1/chat/completions", trace_id)
    core = receiver.wait_for("tandem-core", "tandem.v1.Inference/Generate", trace_id)
    with receiver._lock:  # one span per hop: the request's and the RPC's, no others
        in_trace = [(service, span.name) for service, span in receiver.spans
                    if span.trace_id.hex() == trace_id]
    assert sorted(in_trace) == [("tandem-core", "tandem.v1.Inference/Generate"),
                                ("tandem-facade", "POST /v1/chat/completions")]
    assert facade.parent_span_id.hex() == client_span_id  # the client's trace continues
    assert facade.kind == Span.SPAN_KIND_SERVER
    assert core.parent_span_id.hex() == facade.span_id.hex()  # crossed the gRPC hop
    assert core.kind == Span.SPAN_KIND_SERVER
    assert core.trace_state == "client=7"
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}

    facade_attributes = attributes(facade.attributes)
    assert {key: facade_attributes.get(key) for key in (
        "http.request.method", "http.route", "http.response.status_code", "gen_ai.request.model",
        "gen_ai.response.model", "tandem.stream", "tandem.request_id")} == {
        "http.request.method": "POST", "http.route": "/v1/chat/completions",
        "http.response.status_code": 200, "gen_ai.request.model": MODEL,
        "gen_ai.response.model": MODEL, "tandem.stream": False, "tandem.request_id": request_id}
    core_attributes = attributes(core.attributes)
    assert {key: core_attributes.get(key) for key in (
        "rpc.system", "rpc.method", "gen_ai.response.model", "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens", "gen_ai.response.finish_reasons", "tandem.request_id")} == {
        "rpc.system": "grpc", "rpc.method": "Generate", "gen_ai.response.model": MODEL,
        "gen_ai.usage.input_tokens": body["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": body["usage"]["completion_tokens"],
        "gen_ai.response.finish_reasons": [body["choices"][0]["finish_reason"]],
        "tandem.request_id": request_id}
    assert core.end_time_unix_nano <= facade.end_time_unix_nano

    # the core's request log line names the trace (JSON logs: one object per line)
    def generate_line():
        for line in log_path.read_text().splitlines():
            if line.startswith("{") and f"generate {request_id}:" in line:
                return json.loads(line)
        return None

    assert wait_until(generate_line, "the core's generate log line")["trace_id"] == trace_id


def test_a_stream_without_traceparent_starts_a_trace_the_core_joins(traced_server, receiver):
    base, _ = traced_server
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=60) as reply:
        assert reply.status_code == 200
        assert any(line.startswith("data: [DONE]") for line in reply.iter_lines())
        request_id = reply.headers["x-request-id"]

    def facade_span():
        with receiver._lock:
            return next((span for service, span in receiver.spans if service == "tandem-facade"
                         and attributes(span.attributes).get("tandem.request_id") == request_id),
                        None)

    facade = wait_until(facade_span, "the stream's facade span", EXPORT_WAIT_S)
    assert facade.parent_span_id == b""  # a new trace
    assert attributes(facade.attributes)["tandem.stream"] is True
    core = receiver.wait_for("tandem-core", "tandem.v1.Inference/Generate", facade.trace_id.hex())
    assert core.parent_span_id == facade.span_id


def test_trace_context_helpers():
    valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent(valid) == "4bf92f3577b34da6a3ce929d0e0e4736"
    zero_span = "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01"
    for bad in ("", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff" + valid[2:],
                valid.upper(), valid[:-1], zero_span):
        assert parse_traceparent(bad) is None, bad
    headers = {"traceparent": valid, "tracestate": "a=1"}
    assert trace_headers(headers.get) == (("traceparent", valid), ("tracestate", "a=1"))
    assert trace_headers({"tracestate": "a=1"}.get) == ()
    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"
    with pytest.raises(ValueError, match="http"):
        otlp_traces_url("collector:4318")


def test_unary_rpcs_and_failures_are_traced(traced_server, receiver):
    base, _ = traced_server
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    reply = httpx.post(f"{base}/tokenize", json={"model": MODEL, "prompt": "Hello there"},
                       headers=headers, timeout=30)
    assert reply.status_code == 200, reply.text
    tokenize = receiver.wait_for("tandem-core", "tandem.v1.Inference/Tokenize", trace_id)
    assert attributes(tokenize.attributes)["gen_ai.usage.input_tokens"] == reply.json()["count"]

    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    reply = httpx.post(f"{base}/v1/chat/completions", json={**CHAT, "model": "no-such-model"},
                       headers=headers, timeout=30)
    assert reply.status_code == 404, reply.text
    core = receiver.wait_for("tandem-core", "tandem.v1.Inference/Generate", trace_id)
    facade = receiver.wait_for("tandem-facade", "POST /v1/chat/completions", trace_id)
    assert core.parent_span_id == facade.span_id
    assert core.status.code == core.status.STATUS_CODE_ERROR
    assert attributes(core.attributes)["error.type"] == "ModelNotFound"
    assert attributes(core.attributes)["rpc.grpc.status_code"] == 5  # NOT_FOUND
    assert attributes(facade.attributes)["http.response.status_code"] == 404
    assert facade.status.code != facade.status.STATUS_CODE_ERROR  # a 4xx is the client's
