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

`Score` and `Embed` (unary) share the error models above ("missing", "overloaded", "bad-param",
"too-long", "draining") and add:

| model           | Score / Embed do                                                           |
|-----------------|----------------------------------------------------------------------------|
| "" / other      | Score: `fake_scores` per item; Embed: `fake_embedding` per input            |
| "generate-only" | Embed: INVALID_ARGUMENT + UNSUPPORTED + field "model" (Score works)        |
| "embed-only"    | Score: INVALID_ARGUMENT + UNSUPPORTED + field "model" (Embed works)        |
| "broken"        | Score: a NaN score; Embed: one embedding too few (both facade 500s)        |

A label id ≥ VOCAB_SIZE is INVALID_ARGUMENT + INVALID_PARAMETER + field "label_token_ids";
`dimensions` > EMBEDDING_DIMENSIONS the same with field "dimensions". Their usage counts words of
a text (`input_length`) or token ids; Score reports the query's length as cached for every item
after the first (the shared prefix), as a real prefix cache would.

Everything it sees is recorded (thread-safe) for assertions from the test thread.
"""

from __future__ import annotations

import asyncio
import math
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
# The fake models' vocabulary (label ids at or above it are refused) and embedding size.
VOCAB_SIZE = 1000
EMBEDDING_DIMENSIONS = 8


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
EMBED_ERRORS = {
    **ERRORS,
    "generate-only": rich_status(
        code_pb2.INVALID_ARGUMENT,
        "model 'generate-only' cannot embed",
        "UNSUPPORTED",
        field="model",
    ),
}
SCORE_ERRORS = {
    **ERRORS,
    "embed-only": rich_status(
        code_pb2.INVALID_ARGUMENT,
        "model 'embed-only' cannot score",
        "UNSUPPORTED",
        field="model",
    ),
}


def input_length(value: pb.ScoreInput) -> int:
    """The fake tokenizer: words of a text, or the number of token ids."""
    if value.WhichOneof("input") == "tokens":
        return len(value.tokens.ids)
    return len(value.text.split())


def _input_seed(value: pb.ScoreInput) -> int:
    if value.WhichOneof("input") == "tokens":
        return sum(value.tokens.ids)
    return sum(ord(character) for character in value.text)


def fake_embedding(value: pb.ScoreInput, num_dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The input's vector: EMBEDDING_DIMENSIONS numbers from its content, cut to
    `num_dimensions` and L2-normalized (what the proto's `dimensions` asks for)."""
    seed = _input_seed(value)
    raw = [((seed + position) % 13 - 6) / 8 for position in range(EMBEDDING_DIMENSIONS)]
    raw = raw[:num_dimensions]
    norm = math.sqrt(sum(number * number for number in raw)) or 1.0
    return [number / norm for number in raw]


def fake_scores(item_index: int, label_token_ids: list[int], apply_softmax: bool) -> list[float]:
    """Item `item_index`'s scores: the probability 1 / (label + 2 + item_index) per label, or the
    softmax over the logits label / 10 (the same for every item)."""
    if not apply_softmax:
        return [1 / (label + 2 + item_index) for label in label_token_ids]
    exps = [math.exp(label / 10) for label in label_token_ids]
    return [number / sum(exps) for number in exps]


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
        # Score and Embed requests: (x-request-id, request).
        self.unary_requests: list[tuple[str | None, pb.ScoreRequest | pb.EmbedRequest]] = []
        # The invocation metadata of each Generate call, in arrival order.
        self.generate_metadata: list[dict[str, str]] = []

    def last_request(self) -> tuple[str | None, pb.GenerateRequest]:
        with self._lock:
            return self.requests[-1]

    def last_unary_request(self) -> tuple[str | None, pb.ScoreRequest | pb.EmbedRequest]:
        with self._lock:
            return self.unary_requests[-1]

    def _record_unary(self, request, context) -> None:
        request_id = dict(context.invocation_metadata()).get("x-request-id")
        with self._lock:
            self.unary_requests.append((request_id, request))

    def request_ids(self) -> list[str | None]:
        with self._lock:
            return [request_id for request_id, _ in self.requests]

    async def Generate(self, request, context):
        metadata = dict(context.invocation_metadata())
        request_id = metadata.get("x-request-id")
        with self._lock:
            self.requests.append((request_id, request))
            self.generate_metadata.append(metadata)
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
            # "reasoner": the first half of the words is the think block (as the core parses it)
            reasoning = model == "reasoner" and position < limit // 2
            choices = [
                pb.ChoiceDelta(
                    index=index,
                    token_ids=[token_id],
                    text="" if reasoning else text,
                    reasoning_text=text if reasoning else "",
                    logprobs=logprobs,
                    finish_reason=reason,
                )  # fmt: skip
                for index in range(num_choices)
            ]
            usage = pb.Usage(
                prompt_tokens=len(prompt_words(request)),
                completion_tokens=(position + 1) * num_choices,
                cached_tokens=cached,
                reasoning_tokens=(min(position + 1, limit // 2) * num_choices
                                  if model == "reasoner" else 0),
            )
            yield pb.GenerateResponse(choices=choices, usage=usage, request_id=request_id or "",
                                      model=model)  # fmt: skip
            if model == "unfinished":
                return

    async def Score(self, request, context):
        self._record_unary(request, context)
        model = request.model or DEMO_MODEL
        if model in SCORE_ERRORS:
            await context.abort_with_status(SCORE_ERRORS[model])
        labels = list(request.label_token_ids)
        if any(label >= VOCAB_SIZE for label in labels):
            await context.abort_with_status(rich_status(
                code_pb2.INVALID_ARGUMENT, f"label token ids must be below {VOCAB_SIZE}",
                "INVALID_PARAMETER", field="label_token_ids",
            ))  # fmt: skip
        items = [
            pb.ItemScores(scores=fake_scores(index, labels, request.apply_softmax))
            for index in range(len(request.items))
        ]
        if model == "broken":
            items[0].scores[0] = math.nan
        query_length = input_length(request.query)
        prompt_tokens = sum(query_length + input_length(item) for item in request.items)
        cached_tokens = query_length * max(0, len(request.items) - 1)
        usage = pb.Usage(prompt_tokens=prompt_tokens, cached_tokens=cached_tokens)
        return pb.ScoreResponse(items=items, usage=usage, model=model)

    async def Embed(self, request, context):
        self._record_unary(request, context)
        model = request.model or "embed-demo"
        if model in EMBED_ERRORS:
            await context.abort_with_status(EMBED_ERRORS[model])
        size = request.dimensions if request.HasField("dimensions") else EMBEDDING_DIMENSIONS
        if size > EMBEDDING_DIMENSIONS:
            await context.abort_with_status(rich_status(
                code_pb2.INVALID_ARGUMENT,
                f"dimensions must be at most {EMBEDDING_DIMENSIONS} for this model",
                "INVALID_PARAMETER", field="dimensions",
            ))  # fmt: skip
        embeddings = [
            pb.Embedding(index=index, values=fake_embedding(value, size))
            for index, value in enumerate(request.inputs)
        ]
        if model == "broken":
            del embeddings[-1]
        usage = pb.Usage(prompt_tokens=sum(input_length(value) for value in request.inputs))
        return pb.EmbedResponse(embeddings=embeddings, usage=usage, model=model)

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
