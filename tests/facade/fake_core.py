"""A deterministic stand-in for the Tandem core, served with grpc.aio, for facade tests.

Behaviour is chosen by the request's `model`:

| model        | Generate does                                                                 |
|--------------|-------------------------------------------------------------------------------|
| "" / other   | echoes the prompt's words, one word per response, STOP (LENGTH at max_tokens)  |
| "missing"    | NOT_FOUND + ErrorInfo MODEL_NOT_FOUND                                          |
| "overloaded" | RESOURCE_EXHAUSTED + ErrorInfo OVERLOADED + RetryInfo 7.2 s                    |
| "bad-param"  | INVALID_ARGUMENT + ErrorInfo INVALID_PARAMETER + BadRequest field "top_k"      |
| "too-long"   | INVALID_ARGUMENT + ErrorInfo CONTEXT_LENGTH_EXCEEDED                           |
| "draining"   | UNAVAILABLE                                                                    |
| "midstream"  | two words, then INTERNAL "engine exploded"                                     |
| "unfinished" | one word, then ends without a finish reason                                    |
| "slow"       | a word every 20 ms for ~10 s; records the request id when cancelled            |

Everything it sees is recorded (thread-safe) for assertions from the test thread.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc

DEMO_MODEL = "tiny-demo"
MAX_MODEL_LEN = 512


def _pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rich_status(code: int, message: str, reason: str | None = None, field: str | None = None,
                retry_delay_s: float | None = None) -> grpc.Status:  # fmt: skip
    """A grpc.Status carrying google.rpc details, as the real core sends them."""
    details = []
    if reason is not None:
        details.append(_pack(error_details_pb2.ErrorInfo(reason=reason, domain="tandem.v1")))
    if field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if retry_delay_s is not None:
        seconds = int(retry_delay_s)
        delay = duration_pb2.Duration(seconds=seconds, nanos=int((retry_delay_s - seconds) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=details))


ERRORS = {
    "missing": rich_status(code_pb2.NOT_FOUND, "model 'missing' is not served", "MODEL_NOT_FOUND"),
    "overloaded": rich_status(
        code_pb2.RESOURCE_EXHAUSTED, "queue full", "OVERLOADED", retry_delay_s=7.2
    ),
    "bad-param": rich_status(
        code_pb2.INVALID_ARGUMENT,
        "top_k must be below the vocabulary size",
        "INVALID_PARAMETER",
        field="top_k",
    ),
    "too-long": rich_status(
        code_pb2.INVALID_ARGUMENT,
        "prompt + max_tokens exceed 512 tokens",
        "CONTEXT_LENGTH_EXCEEDED",
    ),
    "draining": rich_status(code_pb2.UNAVAILABLE, "core is draining"),
}


def prompt_words(request: pb.GenerateRequest) -> list[str]:
    """The words the fake 'model' echoes back."""
    kind = request.WhichOneof("input")
    if kind == "text":
        return request.text.split()
    if kind == "tokens":
        return [f"t{token_id}" for token_id in request.tokens.ids]
    last = request.chat.messages[-1] if request.chat.messages else None
    parts = [part.text for part in last.content if part.HasField("text")] if last else []
    return " ".join(parts).split()


class FakeCore(inference_pb2_grpc.InferenceServicer):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: list[tuple[str | None, pb.GenerateRequest]] = []  # (x-request-id, request)
        self.cancelled_request_ids: list[str | None] = []
        self.cancelled = threading.Event()

    def last_request(self) -> tuple[str | None, pb.GenerateRequest]:
        with self._lock:
            return self.requests[-1]

    def request_ids(self) -> list[str | None]:
        with self._lock:
            return [request_id for request_id, _ in self.requests]

    async def Generate(self, request, context):
        request_id = dict(context.invocation_metadata()).get("x-request-id")
        with self._lock:
            self.requests.append((request_id, request))
        model = request.model or DEMO_MODEL
        if model in ERRORS:
            await context.abort_with_status(ERRORS[model])
        words = prompt_words(request) or ["empty"]
        if model == "slow":
            words = [f"w{i}" for i in range(500)]
        try:
            async for response in self._echo(request, model, request_id, words, context):
                yield response
        except (asyncio.CancelledError, GeneratorExit):  # cancelled while waiting or yielding
            with self._lock:
                self.cancelled_request_ids.append(request_id)
            self.cancelled.set()
            raise

    async def _echo(self, request, model, request_id, words, context):
        num_choices = request.n if request.HasField("n") else 1
        max_tokens = (
            request.stopping.max_tokens if request.stopping.HasField("max_tokens") else None
        )
        limit = min(len(words), max_tokens) if max_tokens is not None else len(words)
        cached = 2 if len(prompt_words(request)) > 2 else 0
        for position in range(limit):
            if model == "midstream" and position == 2:
                await context.abort(grpc.StatusCode.INTERNAL, "engine exploded")
            if model == "slow":
                await asyncio.sleep(0.02)
            last = position == limit - 1 and model != "unfinished"
            reason = pb.FINISH_REASON_UNSPECIFIED
            if last:
                reason = pb.FINISH_REASON_LENGTH if limit < len(words) else pb.FINISH_REASON_STOP
            token_id = 100 + position
            text = words[position] if position == 0 else " " + words[position]
            logprobs = []
            if request.logprobs:
                tops = [pb.TopLogprob(token_id=token_id + k, logprob=-0.5 - k)
                        for k in range(request.top_logprobs)]  # fmt: skip
                logprobs = [pb.TokenLogprob(token_id=token_id, logprob=-0.5, top_logprobs=tops)]
            choices = [
                pb.ChoiceDelta(
                    index=index,
                    token_ids=[token_id],
                    text=text,
                    logprobs=logprobs,
                    finish_reason=reason,
                )  # fmt: skip
                for index in range(num_choices)
            ]
            usage = pb.Usage(
                prompt_tokens=len(prompt_words(request)),
                completion_tokens=(position + 1) * num_choices,
                cached_tokens=cached,
            )
            yield pb.GenerateResponse(choices=choices, usage=usage, request_id=request_id or "",
                                      model=model)  # fmt: skip
            if model == "unfinished":
                return

    async def ListModels(self, request, context):
        demo = pb.ModelInfo(
            id=DEMO_MODEL, owned_by="tandem", created=1_700_000_000, is_demo=True,
            description="built-in demo model with random weights", max_model_len=MAX_MODEL_LEN,
            capabilities=[pb.CAPABILITY_GENERATE],
        )  # fmt: skip
        other = pb.ModelInfo(id="org/other-model", owned_by="org", created=1_700_000_001)
        return pb.ListModelsResponse(models=[demo, other])

    async def Detokenize(self, request, context):
        return pb.DetokenizeResponse(
            text=" ".join(f"t{token_id}" for token_id in request.token_ids)
        )


class FakeHealth(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 with a settable status for "tandem.v1.Inference"."""

    def __init__(self) -> None:
        self.status = health_pb2.HealthCheckResponse.SERVING

    async def Check(self, request, context):
        if request.service not in ("", "tandem.v1.Inference"):
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=self.status)


async def start_fake_core(core: FakeCore, health: FakeHealth) -> tuple[grpc.aio.Server, int]:
    """Serve both servicers on a free loopback port; returns (server, port)."""
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServicer_to_server(core, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port
