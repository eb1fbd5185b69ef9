"""The vLLM engine contract (`vllm.grpc.engine.VllmEngine` of the pinned `smg-grpc-proto`), served
next to Tandem's own so that the SGLang Model Gateway (`smg`, gRPC mode) can route to a core.

Owns: mapping that contract's requests onto Tandem's `GenerateRequest` and its replies back —
there is no second generation path: a vLLM Generate is run by `InferenceServicer.Generate`
(tokens in; token ids out, the text is detokenized only when stop strings need it, as vLLM
does), under the vLLM request id so that the vLLM Abort reaches it. Stream replies are one
`chunk` per choice and step (delta token ids, delta count) and a `complete` when a choice
finishes; non-stream replies are one `complete` per choice with every output id. HealthCheck
follows the core's readiness (`tandem.v1.Inference` in grpc.health.v1): while loading,
stalled or draining it fails UNAVAILABLE, which the gateway reads as unhealthy. GetModelInfo,
GetServerInfo, GetLoads (from `core/service/load.py`) and FlushCache (the prefix-cache reset)
are what the gateway reads at registration and while routing. Not served (UNIMPLEMENTED):
Embed, GetTokenizer (give the gateway `--tokenizer-path`), SubscribeKvEvents (the gateway's
cache-aware policy then keeps its own approximate tree), profiling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import grpc
from smg_grpc_proto.generated import common_pb2
from smg_grpc_proto.generated import vllm_engine_pb2 as vpb
from smg_grpc_proto.generated import vllm_engine_pb2_grpc as vpb_grpc

from core.errors import InvalidParameter, TandemError, Unavailable, Unsupported
from core.model_config import read_hf_config
from core.service.load import engine_load
from tandem.v1 import inference_pb2 as pb

SERVICE_NAME = vpb.DESCRIPTOR.services_by_name["VllmEngine"].full_name
SERVER_TYPE = "tandem"  # GetServerInfo.server_type
FINISH_REASONS = {pb.FINISH_REASON_STOP: "stop", pb.FINISH_REASON_LENGTH: "length",
                  pb.FINISH_REASON_TOOL_CALLS: "stop", pb.FINISH_REASON_ABORT: "abort"}
CONSTRAINTS = {"json_schema": "json", "regex": "regex", "grammar": "grammar",
               "json_object": "json_object"}  # vLLM constraint field → Tandem's


def tandem_request(request: vpb.GenerateRequest) -> pb.GenerateRequest:
    """The Tandem GenerateRequest that does what a vLLM GenerateRequest asks (InvalidParameter
    or Unsupported, naming the field, for what Tandem cannot do)."""
    if request.HasField("mm_inputs") or request.extra_mm_inputs or request.HasField("media_refs"):
        raise Unsupported("this core serves text models: multimodal inputs are not supported",
                          param="mm_inputs")
    params = request.sampling_params
    out = pb.GenerateRequest(n=params.n or 1, detokenize=bool(params.stop))
    kind = request.WhichOneof("input")
    if kind == "tokenized":
        ids = list(request.tokenized.input_ids)
        if params.HasField("truncate_prompt_tokens") and params.truncate_prompt_tokens > 0:
            ids = ids[-params.truncate_prompt_tokens:]  # vLLM keeps the last k tokens
        out.tokens.ids.extend(ids)
    elif kind == "text":
        out.text = request.text
    else:
        raise InvalidParameter("a GenerateRequest needs `tokenized` or `text` input",
                               param="input")
    sampling = out.sampling
    if params.HasField("temperature"):
        sampling.temperature = params.temperature
    for name in ("top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "top_k"):
        value = getattr(params, name)  # proto3 zero: unset (vLLM's servicer reads it so too)
        if value:
            setattr(sampling, name, value)
    if params.HasField("seed"):
        sampling.seed = params.seed % 2**64  # a negative int32 seed: its two's complement
    for token_id, bias in params.logit_bias.items():
        sampling.logit_bias[token_id] = bias
    stopping = out.stopping
    if params.HasField("max_tokens"):
        stopping.max_tokens = params.max_tokens
    if params.min_tokens:
        stopping.min_tokens = params.min_tokens
    stopping.stop.extend(params.stop)
    stopping.stop_token_ids.extend(params.stop_token_ids)
    stopping.ignore_eos = params.ignore_eos
    stopping.include_stop_str_in_output = params.include_stop_str_in_output
    if params.stop:  # (the text is made only to find stop strings)
        stopping.skip_special_tokens = params.skip_special_tokens
    if params.HasField("logprobs"):
        if params.logprobs < 0:
            raise InvalidParameter("logprobs -1 (all) is not supported; ask for at most 20",
                                   param="logprobs")
        out.logprobs = True
        if params.logprobs:
            out.top_logprobs = params.logprobs
    if params.HasField("prompt_logprobs"):
        if params.prompt_logprobs < 0:
            raise InvalidParameter("prompt_logprobs -1 (all) is not supported",
                                   param="prompt_logprobs")
        out.prompt_logprobs = params.prompt_logprobs
    constraint = params.WhichOneof("constraint")
    if constraint == "choice":
        out.structured_outputs.choice.choices.extend(params.choice.choices)
    elif constraint in CONSTRAINTS:
        setattr(out.structured_outputs, CONSTRAINTS[constraint], getattr(params, constraint))
    elif constraint is not None:
        raise Unsupported(f"the {constraint} constraint is not supported", param=constraint)
    return out


class ChoiceReplies:
    """Tandem's response chunks of one call as the vLLM contract's replies, choice by choice."""

    def __init__(self, stream: bool, num_prompt_tokens: int):
        self.stream = stream
        self.num_prompt_tokens = num_prompt_tokens
        self._outputs: dict[int, list[int]] = {}  # choice → its output ids so far
        self._logprobs: dict[int, vpb.OutputLogProbs] = {}  # (non-stream: gathered)
        self._input_logprobs: dict[int, vpb.InputLogProbs] = {}

    def replies(self, response: pb.GenerateResponse) -> list[vpb.GenerateResponse]:
        replies, cached = [], response.usage.cached_tokens
        for delta in response.choices:
            output = self._outputs.setdefault(delta.index, [])
            output.extend(delta.token_ids)
            logprobs = _output_logprobs(delta.logprobs)
            first = delta.index not in self._input_logprobs
            if first:
                self._input_logprobs[delta.index] = _input_logprobs(delta.prompt_logprobs)
            if self.stream:
                chunk = vpb.GenerateStreamChunk(
                    token_ids=delta.token_ids, prompt_tokens=self.num_prompt_tokens,
                    completion_tokens=len(delta.token_ids), cached_tokens=cached,
                    index=delta.index, output_logprobs=logprobs)
                if first:
                    chunk.input_logprobs.CopyFrom(self._input_logprobs[delta.index])
                replies.append(vpb.GenerateResponse(chunk=chunk))
            else:
                self._logprobs.setdefault(delta.index, vpb.OutputLogProbs()).MergeFrom(logprobs)
            if delta.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                replies.append(self._complete(delta, logprobs, cached))
        return replies

    def _complete(self, delta: pb.ChoiceDelta, logprobs: vpb.OutputLogProbs,
                  cached: int) -> vpb.GenerateResponse:
        """A choice's last reply: as vLLM's servicer, its last delta when streaming (the gateway
        has gathered the rest), every output id otherwise."""
        ids = list(delta.token_ids) if self.stream else self._outputs[delta.index]
        complete = vpb.GenerateComplete(
            output_ids=ids, finish_reason=FINISH_REASONS[delta.finish_reason],
            prompt_tokens=self.num_prompt_tokens, completion_tokens=len(ids),
            cached_tokens=cached, index=delta.index,
            output_logprobs=logprobs if self.stream else self._logprobs[delta.index],
            input_logprobs=self._input_logprobs[delta.index])
        if delta.HasField("stop_string"):
            complete.matched_stop_str = delta.stop_string
        elif delta.HasField("stop_token_id"):
            complete.matched_token_id = delta.stop_token_id
        return vpb.GenerateResponse(complete=complete)


def _output_logprobs(entries) -> vpb.OutputLogProbs:
    out = vpb.OutputLogProbs()
    for entry in entries:
        out.token_logprobs.append(entry.logprob)
        out.token_ids.append(entry.token_id)
        out.top_logprobs.append(vpb.TopLogProbs(
            values=[top.logprob for top in entry.top_logprobs],
            token_ids=[top.token_id for top in entry.top_logprobs]))
    return out


def _input_logprobs(entries) -> vpb.InputLogProbs:
    """Tandem's prompt logprobs start at position 1; vLLM's first prompt token has none."""
    out = vpb.InputLogProbs()
    if not entries:
        return out
    out.token_logprobs.add()  # (the first token: no value)
    out.top_logprobs.add()
    for entry in entries:
        out.token_logprobs.add(value=entry.logprob)
        out.token_ids.append(entry.token_id)
        out.top_logprobs.append(vpb.TopLogProbs(
            values=[top.logprob for top in entry.top_logprobs],
            token_ids=[top.token_id for top in entry.top_logprobs]))
    return out


class VllmEngineServicer(vpb_grpc.VllmEngineServicer):
    """The vLLM engine service over a core's `InferenceServicer` (its default model)."""

    def __init__(self, inference, ready: Callable[[], bool],
                 bind_request_id: Callable[[grpc.aio.ServicerContext, str], None]):
        self.inference = inference  # core/service/server.py's InferenceServicer
        self._ready = ready  # the core's readiness (loaded, not stalled, not draining)
        self._bind_request_id = bind_request_id  # names the RPC's call for Abort and the logs
        self.started_s = time.time()

    async def Generate(self, request: vpb.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[vpb.GenerateResponse]:
        try:
            tandem = tandem_request(request)
        except TandemError as exc:
            await context.abort_with_status(exc.to_grpc_status())
            return
        if request.request_id:  # (what smg's Abort names; else x-request-id or a fresh one)
            self._bind_request_id(context, request.request_id)
        replies = ChoiceReplies(request.stream, len(tandem.tokens.ids))
        async for response in self.inference.Generate(tandem, context):
            if tandem.WhichOneof("input") != "tokens":
                replies.num_prompt_tokens = response.usage.prompt_tokens
            for reply in replies.replies(response):
                yield reply

    async def Abort(self, request: vpb.AbortRequest, context) -> vpb.AbortResponse:
        await self.inference.Abort(pb.AbortRequest(request_ids=request.request_ids), context)
        return vpb.AbortResponse()

    async def HealthCheck(self, request, context) -> vpb.HealthCheckResponse:
        if not self._ready():
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "not ready: loading, stalled or draining")
        return vpb.HealthCheckResponse(healthy=True, message="ready")

    async def GetModelInfo(self, request, context) -> vpb.GetModelInfoResponse:
        model = await self._default_model(context)
        hf = await asyncio.to_thread(read_hf_config, model.tokenizer.model_dir)
        eos = hf.get("eos_token_id")
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        model_dir = str(model.tokenizer.model_dir)
        return vpb.GetModelInfoResponse(
            model_path=model_dir, is_generation=True,
            max_context_length=model.policy.max_model_len, vocab_size=model.policy.vocab_size,
            supports_vision=False, served_model_name=model.name, tokenizer_path=model_dir,
            model_type=hf.get("model_type", ""), architectures=hf.get("architectures", []),
            eos_token_ids=eos_ids, pad_token_id=hf.get("pad_token_id") or 0,
            bos_token_id=hf.get("bos_token_id") or 0,
            max_req_input_len=model.policy.max_model_len)

    async def GetServerInfo(self, request, context) -> vpb.GetServerInfoResponse:
        model = await self._default_model(context)
        engine = model.generator
        return vpb.GetServerInfoResponse(
            active_requests=engine.num_unfinished, uptime_seconds=time.time() - self.started_s,
            server_type=SERVER_TYPE, data_parallel_size=1,
            max_num_seqs=engine.engine_config.max_num_seqs)

    async def GetLoads(self, request, context) -> vpb.GetLoadsResponse:
        model = await self._default_model(context)
        load = engine_load(model.name, model.generator)
        running, waiting = load.num_requests_running, load.num_requests_waiting
        return vpb.GetLoadsResponse(
            timestamp=datetime.now(UTC).isoformat(), dp_rank_count=1,
            loads=[vpb.SchedulerLoad(
                dp_rank=0, num_running_reqs=running, num_waiting_reqs=waiting,
                num_total_reqs=running + waiting, token_usage=load.kv_cache_usage,
                cache_hit_rate=load.prefix_cache_hit_rate,
                max_running_requests=model.generator.engine_config.max_num_seqs,
                num_waiting_uncached_tokens=load.num_waiting_uncached_tokens)])

    async def FlushCache(self, request, context) -> common_pb2.FlushCacheResponse:
        model = await self._default_model(context)
        freed = await asyncio.wrap_future(model.generator.clear_prefix_cache())
        return common_pb2.FlushCacheResponse(success=True, message=f"{freed} pages freed")

    async def _default_model(self, context):
        try:
            model = self.inference._model("", pb.CAPABILITY_GENERATE)
        except TandemError as exc:
            await context.abort_with_status(exc.to_grpc_status())
        if model.generator is None:  # (an embedding-only core)
            await context.abort_with_status(
                Unavailable("this core serves no generative model").to_grpc_status())
        return model


def add_vllm_engine(server: grpc.aio.Server, inference, ready: Callable[[], bool],
                    bind_request_id: Callable[[grpc.aio.ServicerContext, str], None]) -> None:
    """Serve the vLLM engine service on `server` (core/service/server.py's CoreServer)."""
    vpb_grpc.add_VllmEngineServicer_to_server(
        VllmEngineServicer(inference, ready, bind_request_id), server)
