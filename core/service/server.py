"""The core's gRPC server: the Inference servicer, health, reflection, start-up and drain.

Owns: turning RPCs into engine work (Generate's chunks are `core/service/generate.py`'s, Score's,
Embed's and Rerank's request handling `score.py`'s, `embed.py`'s and `rerank.py`'s); the
`grpc.health.v1` statuses
("" = live as soon as the port is bound; "tandem.v1.Inference" = ready only after weights are
loaded and every bucket is compiled, and not while an engine is stalled: the stall detector
turns it NOT_SERVING when unfinished work has waited `stall_timeout_s` with no engine step,
SERVING again once the engine moves); server reflection; aborting a request when its RPC is
cancelled or its deadline passes, or when the Abort RPC names its call's `x-request-id` (the
in-flight calls are kept by that id); each RPC's trace (its caller's W3C `traceparent`, its span
when tracing is on: `tracing.py`); graceful drain on SIGTERM; the prefix cache's event stream
(SubscribeKvEvents, `core/cache/events.py`) and its reset.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import signal
import time
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.config import ServerConfig
from core.engine.loop import Engine
from core.errors import ModelNotFound, TandemError, Unavailable, Unsupported
from core.model_config import (
    ConfigError,
    is_cross_encoder_config,
    is_encoder_config,
    read_hf_config,
)
from core.service import convert
from core.service.embed import check_dimensions, embed_inputs, embed_response
from core.service.generate import ChoiceStream, apply_reasoning_plan, apply_tool_plan
from core.service.kv_events import kv_event_messages
from core.service.load import engine_load
from core.service.rerank import rerank_pairs, rerank_response
from core.service.score import run_score, score_prompts
from core.service.served_models import (
    CAPABILITY_NAMES,
    ServedModel,
    load_embedding,
    load_generative,
    load_reranker,
)
from core.service.tokenizer_files import tokenizer_chunks
from core.service.tracing import RpcTrace
from core.service.vllm_engine import SERVICE_NAME as VLLM_SERVICE_NAME
from core.service.vllm_engine import add_vllm_engine
from tandem.limits import MAX_CHOICES
from tandem.logs import request_id_var  # the shared log format (stdlib only)
from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
# (id of the RPC's context, its request id): `_request_id` answers the same within one RPC.
_rpc_request_id: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "tandem_rpc_request_id", default=None)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name
# Least grace `drain_and_stop` gives RPCs to send what the engine has already produced.
STOP_FLUSH_S = 1.0
# RPCs without a span: load polls a router makes every few hundred milliseconds.
UNTRACED = frozenset({"GetLoad"})
STALL_POLL_S = 0.5  # how often the stall detector looks (at most: a quarter of its timeout)
DEMO_DESCRIPTION = ("Tandem's built-in demo model: a small Llama with RANDOM weights made "
                    "locally on first run; its text is gibberish. Pass --model DIR to serve a "
                    "real model.")


def _typed_errors(handler):
    """A unary RPC whose TandemErrors become the gRPC status with google.rpc details, traced
    (core/service/tracing.py) unless it is a router's poll (UNTRACED)."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        if method in UNTRACED:
            try:
                return await handler(self, request, context)
            except TandemError as exc:
                await context.abort_with_status(exc.to_grpc_status())
        with RpcTrace(context, method, _request_id(context)) as trace:
            try:
                reply = await handler(self, request, context)
            except TandemError as exc:
                trace.fail(exc, exc.code)
                await context.abort_with_status(exc.to_grpc_status())
            trace.record_reply(request, reply)
            return reply

    return wrapper


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, model_names: list[str], embedding_model_name: str | None = None,
                 rerank_model_name: str | None = None):
        self.expected = list(model_names)  # names it will serve once loaded (first: default)
        self.embedding_model_name = embedding_model_name  # the default for Embed, if any
        self.rerank_model_name = rerank_model_name  # the default for Rerank, if any
        self.models: dict[str, ServedModel] = {}  # filled by `attach` as models finish loading
        # Generate calls in flight by their x-request-id (what Abort names; several calls may
        # share one id)
        self._calls: dict[str, set[ChoiceStream]] = {}

    def attach(self, model: ServedModel) -> None:
        """Start serving a loaded, warmed-up model."""
        self.models[model.name] = model

    @property
    def engine(self) -> Engine | None:
        """The default model's generation engine (None while loading)."""
        model = self.models.get(self.expected[0])
        return model.generator if model else None

    # -- helpers ---------------------------------------------------------------------------

    def _model(self, name: str, capability: int | None = None) -> ServedModel:
        """The model a request names ("" → the default for `capability`), or the typed error:
        MODEL_NOT_FOUND, UNAVAILABLE while loading, UNSUPPORTED when it cannot do the work."""
        if not name:
            name = self.expected[0]
            if capability == pb.CAPABILITY_EMBED and self.embedding_model_name:
                name = self.embedding_model_name
            if capability == pb.CAPABILITY_RERANK and self.rerank_model_name:
                name = self.rerank_model_name
        if name not in self.expected:
            raise ModelNotFound(f"The model '{name}' does not exist; this core serves "
                                f"{', '.join(repr(n) for n in self.expected)}.", param="model")
        model = self.models.get(name)
        if model is None:
            raise Unavailable(f"the model '{name}' is still loading")
        if capability is not None and capability not in model.capabilities:
            can = ", ".join(CAPABILITY_NAMES[c] for c in model.capabilities)
            raise Unsupported(f"the model '{name}' cannot {CAPABILITY_NAMES[capability]}; it "
                              f"can: {can}", param="model")
        return model

    # -- RPCs ------------------------------------------------------------------------------

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        request_id = _request_id(context)  # this RPC's task: every log line it writes carries it
        stream = None
        with RpcTrace(context, "Generate", request_id) as trace:
            try:
                model = self._model(request.model, pb.CAPABILITY_GENERATE)
                trace.set({"gen_ai.request.model": request.model or None,
                           "gen_ai.response.model": model.name})
                engine = model.generator
                prompt_ids = await asyncio.to_thread(  # templates and tokenizing: off the loop
                    convert.prompt_token_ids, model.tokenizer, model.policy, request)
                requests = convert.generation_requests(  # engine keys are unique per RPC
                    request, prompt_ids, uuid.uuid4().hex, model.policy,
                    max_choices=min(MAX_CHOICES, engine.engine_config.max_unfinished),
                    tokenizer=model.tokenizer)
                parsers = apply_tool_plan(request, model, requests)
                reasoners = apply_reasoning_plan(request, model, prompt_ids, requests)
                for spec in {r.grammar for r in requests if r.grammar is not None}:
                    await asyncio.to_thread(engine.check_grammar, spec)  # compiles: off the loop
                log.info("generate %s: %d prompt tokens, n=%d", request_id, len(prompt_ids),
                         len(requests))
                stream = ChoiceStream(engine, model.tokenizer, requests,
                                      asyncio.get_running_loop(), parsers, reasoners)
                self._calls.setdefault(request_id, set()).add(stream)
                async for response in stream.responses():
                    response.request_id, response.model = request_id, model.name
                    trace.record_chunk(response)
                    yield response
            except TandemError as exc:
                trace.fail(exc, exc.code)
                await context.abort_with_status(exc.to_grpc_status())
            finally:
                if stream is not None:
                    self._forget_call(request_id, stream)
                    if stream.abort_unfinished():  # cancelled, deadline, failed
                        log.info("generate %s: aborted its unfinished choices", request_id)

    def _forget_call(self, request_id: str, stream: ChoiceStream) -> None:
        calls = self._calls.get(request_id)
        if calls is not None:
            calls.discard(stream)
            if not calls:
                del self._calls[request_id]

    @_typed_errors
    async def Abort(self, request: pb.AbortRequest, context):
        aborted, unknown = [], []
        for request_id in dict.fromkeys(request.request_ids):
            streams = list(self._calls.get(request_id, ()))
            stopped = [stream.abort_asked() for stream in streams]  # (each stream is asked)
            (aborted if any(stopped) else unknown).append(request_id)
        log.info("abort: %d in flight, %d unknown", len(aborted), len(unknown))
        return pb.AbortResponse(aborted_request_ids=aborted, unknown_request_ids=unknown)

    @_typed_errors
    async def Tokenize(self, request: pb.TokenizeRequest, context):
        model = self._model(request.model)
        ids = await asyncio.to_thread(convert.prompt_token_ids, model.tokenizer, model.policy,
                                      request, allow_empty=True)
        return pb.TokenizeResponse(token_ids=ids, tokens=model.tokenizer.token_strings(ids),
                                   max_model_len=model.policy.max_model_len)

    @_typed_errors
    async def Detokenize(self, request: pb.DetokenizeRequest, context):
        model = self._model(request.model)
        convert.check_token_ids(request.token_ids, model.policy.vocab_size, "token_ids")
        skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
        return pb.DetokenizeResponse(text=model.tokenizer.decode(list(request.token_ids), skip))

    @_typed_errors
    async def ListModels(self, request, context):
        self._model("")  # UNAVAILABLE until the default model is loaded
        return pb.ListModelsResponse(models=[self.models[name].model_info()
                                             for name in self.expected if name in self.models])

    @_typed_errors
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context):
        return self._model(request.model).model_info()

    @_typed_errors
    async def GetLoad(self, request: pb.GetLoadRequest, context):
        names = [request.model] if request.model else list(self.expected)
        for name in names:
            self._model(name)  # MODEL_NOT_FOUND / UNAVAILABLE while loading
        return pb.GetLoadResponse(engines=[
            engine_load(name, self.models[name].engines[0]) for name in names])

    async def SubscribeKvEvents(self, request: pb.SubscribeKvEventsRequest, context):
        try:
            model = self._model(request.model, pb.CAPABILITY_GENERATE)
        except TandemError as exc:
            await context.abort_with_status(exc.to_grpc_status())
        start_seq = request.start_seq if request.HasField("start_seq") else None
        subscription = model.generator.kv_events.subscribe(asyncio.get_running_loop(), start_seq)
        try:
            while True:
                batch = await subscription.next_batch()
                yield pb.SubscribeKvEventsResponse(model=model.name, resync=batch.resync,
                                                   events=kv_event_messages(batch.events))
        finally:  # the subscriber went away (or the server stops)
            subscription.close()

    @_typed_errors
    async def ResetPrefixCache(self, request: pb.ResetPrefixCacheRequest, context):
        model = self._model(request.model, pb.CAPABILITY_GENERATE)
        freed = await asyncio.wrap_future(model.generator.clear_prefix_cache())
        return pb.ResetPrefixCacheResponse(num_pages_freed=freed)

    async def GetTokenizer(self, request: pb.GetTokenizerRequest, context):
        try:
            model = self._model(request.model)
        except TandemError as exc:
            await context.abort_with_status(exc.to_grpc_status())
            return
        for chunk in await asyncio.to_thread(list, tokenizer_chunks(model.tokenizer.model_dir)):
            yield chunk

    @_typed_errors
    async def Score(self, request: pb.ScoreRequest, context):
        model = self._model(request.model, pb.CAPABILITY_SCORE)
        request_id = _request_id(context)
        prompts = await asyncio.to_thread(score_prompts, model.tokenizer, model.policy, request)
        log.info("score %s: %d items, %d prompt tokens", request_id, len(prompts),
                 sum(len(prompt) for prompt in prompts))
        response = await run_score(model.generator, prompts, request, uuid.uuid4().hex)
        response.model = model.name
        return response

    @_typed_errors
    async def Embed(self, request: pb.EmbedRequest, context):
        model = self._model(request.model, pb.CAPABILITY_EMBED)
        request_id = _request_id(context)
        dimensions = request.dimensions if request.HasField("dimensions") else None
        check_dimensions(dimensions, model.embedder.dimensions)
        token_ids = await asyncio.to_thread(embed_inputs, model.tokenizer, model.policy, request)
        log.info("embed %s: %d inputs, %d tokens", request_id, len(token_ids),
                 sum(len(ids) for ids in token_ids))
        vectors = await asyncio.wrap_future(model.embedder.submit(token_ids))
        return await asyncio.to_thread(embed_response, vectors, dimensions, token_ids,
                                       model.name)  # big replies: off the event loop

    @_typed_errors
    async def Rerank(self, request: pb.RerankRequest, context):
        model = self._model(request.model, pb.CAPABILITY_RERANK)
        request_id = _request_id(context)
        pairs = await asyncio.to_thread(rerank_pairs, model.tokenizer, model.policy, request)
        log.info("rerank %s: %d documents, %d tokens", request_id, len(pairs.token_ids),
                 pairs.num_tokens)
        scores = await asyncio.wrap_future(
            model.reranker.submit(pairs.token_ids, pairs.token_type_ids))
        return rerank_response(scores[:, 0], request, pairs, model.name)


def bind_request_id(context: grpc.aio.ServicerContext, request_id: str) -> None:
    """Make `request_id` this RPC's request id (what its log lines carry and Abort names)."""
    request_id_var.set(request_id)
    _rpc_request_id.set((id(context), request_id))


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-request-id (or a fresh one), set for this RPC's log lines; the same id
    each time within one RPC."""
    known = _rpc_request_id.get()
    if known is not None and known[0] == id(context):
        return known[1]
    request_id = dict(context.invocation_metadata() or ()).get("x-request-id") \
        or uuid.uuid4().hex
    bind_request_id(context, request_id)
    return request_id


class CoreServer:
    """One grpc.aio server bound to a port, serving its models once `load()` has run: the main
    model (a decoder, an encoder that only embeds or a cross-encoder that only reranks) and,
    optionally, an embedding model and a reranking model."""

    def __init__(self, config: ServerConfig):
        self.config = config
        names = [config.model_name or Path(config.model_dir).name]
        embedding_name = rerank_name = None
        if config.embedding_model_dir is not None:
            embedding_name = (config.embedding_model_name
                              or Path(config.embedding_model_dir).name)
            names.append(embedding_name)
        if config.rerank_model_dir is not None:
            rerank_name = config.rerank_model_name or Path(config.rerank_model_dir).name
            names.append(rerank_name)
        if len(set(names)) != len(names):
            raise ConfigError(f"two models share one id among {names}: give each its own "
                              "(--served-model-name, --embedding-model-name, "
                              "--rerank-model-name)")
        self.servicer = InferenceServicer(names, embedding_name, rerank_name)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        pb_grpc.add_InferenceServicer_to_server(self.servicer, self.server)
        add_vllm_engine(self.server, self.servicer, self.is_ready, bind_request_id)  # for smg
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, VLLM_SERVICE_NAME,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], self.server)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.stall_timeout_s = config.stall_timeout_s  # 0: no stall detector
        self._draining = False  # once set, readiness stays NOT_SERVING
        self._stalled = False  # the stall detector's verdict
        self._stall_watch: asyncio.Task | None = None

    async def start(self) -> int:
        """Bind and serve: live at once, not ready until `load()` finishes."""
        self.port = self.server.add_insecure_port(f"{self.config.host}:{self.config.grpc_port}")
        if not self.port:
            raise OSError(f"cannot bind {self.config.host}:{self.config.grpc_port}")
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("core listening on %s:%d (not ready: loading %s)", self.config.host, self.port,
                 self.config.model_dir)
        return self.port

    async def load(self) -> None:
        """Load weights, compile every bucket, then report ready."""
        config, names = self.config, self.servicer.expected
        started = time.perf_counter()
        hf_config = read_hf_config(config.model_dir)  # the one read of the main model's config
        rows = config.encoder_max_batch_rows
        if is_cross_encoder_config(hf_config):
            loads = [asyncio.to_thread(load_reranker, config.model_dir, names[0], rows)]
        elif is_encoder_config(hf_config):
            loads = [asyncio.to_thread(load_embedding, config.model_dir, names[0], rows)]
        else:
            loads = [asyncio.to_thread(
                load_generative, config.model_dir, names[0], config.engine, DEMO_DESCRIPTION,
                config.decoder_pooling, config.trust_request_chat_template,
                config.tool_call_parser, hf_config, config.reasoning_parser,
                config.json_open_objects)]
        if config.embedding_model_dir is not None:  # all warm up at once (XLA compiles
            loads.append(asyncio.to_thread(  # without the GIL)
                load_embedding, config.embedding_model_dir, self.servicer.embedding_model_name,
                rows))
        if config.rerank_model_dir is not None:
            loads.append(asyncio.to_thread(
                load_reranker, config.rerank_model_dir, self.servicer.rerank_model_name, rows))
        main, *others = await asyncio.gather(*loads)
        for model in others:
            self.servicer.attach(model)
        self.servicer.attach(main)
        if config.metrics_port is not None and main.generator is not None:
            self.metrics_port = main.generator.metrics.serve(config.metrics_port, config.host,
                                                             model_name=main.name)
            log.info("metrics on http://%s:%d/metrics", config.host, self.metrics_port)
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._stall_watch = asyncio.create_task(self._watch_for_stalls())
        log.info("core ready: %s loaded and warmed up in %.1f s",
                 ", ".join(repr(name) for name in names), time.perf_counter() - started)

    def is_ready(self) -> bool:
        """What readiness says: loaded, not stalled, not draining."""
        return self.servicer.engine is not None and not (self._stalled or self._draining)

    async def _watch_for_stalls(self) -> None:
        """Readiness follows the engines: NOT_SERVING while one has held unfinished work for
        `stall_timeout_s` without finishing a step, SERVING again once it moves. Liveness is
        untouched (a stalled core is not restarted for a long step, only taken out of rotation)."""
        while not self._draining:
            timeout_s = self.stall_timeout_s
            await asyncio.sleep(min(STALL_POLL_S, timeout_s / 4) if timeout_s > 0
                                else STALL_POLL_S)
            engines = [engine for model in self.servicer.models.values()
                       for engine in model.engines]
            worst_s = max((engine.stalled_for_s() for engine in engines), default=0.0)
            now_stalled = 0 < timeout_s < worst_s
            if now_stalled == self._stalled or self._draining:
                continue
            self._stalled = stalled = now_stalled
            if stalled:
                log.warning("engine stalled: unfinished work, no step for %.1f s (over %.1f s): "
                            "readiness NOT_SERVING", worst_s, timeout_s)
            else:
                log.info("engine moving again: readiness SERVING")
            await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING
                                  if stalled else health_pb2.HealthCheckResponse.SERVING)

    async def drain_and_stop(self) -> None:
        """Drain, then stop: readiness turns NOT_SERVING (balancers and the facade's channel
        stop picking this core), new Generate calls get UNAVAILABLE at once (the facade retries
        another core), and in-flight requests finish with all their tokens for up to
        `drain_timeout_s`; then the server stops, cancelling whatever is still running."""
        self._draining = True
        if self._stall_watch is not None:
            self._stall_watch.cancel()
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        engine = self.servicer.engine
        deadline = time.monotonic() + self.config.drain_timeout_s
        for model in self.servicer.models.values():
            model.stop_admitting()
        if engine is not None:
            log.info("draining: %d requests in flight", engine.num_unfinished)
            while engine.num_unfinished and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        # `stop` returns as soon as the last RPC ends: the grace only bounds RPCs still sending
        # their final chunks (the engine is done with them) or still tokenizing (they will get
        # UNAVAILABLE), so it never goes below STOP_FLUSH_S.
        await self.server.stop(grace=max(STOP_FLUSH_S, deadline - time.monotonic()))
        for model in self.servicer.models.values():
            model.stop()
        log.info("core stopped")


async def run(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    core = CoreServer(config)
    await core.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loading = asyncio.create_task(core.load())
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading in done and loading.exception() is not None:
        stopping.cancel()
        await core.server.stop(grace=0)
        raise loading.exception()
    await stopping
    log.info("shutdown requested: draining")
    await core.drain_and_stop()
