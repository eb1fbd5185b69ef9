"""The SGLang Model Gateway (`smg`, the pinned wheel's Rust binary) in front of two Tandem cores
(tiny Llama: A is the session `server` fixture's core, B a `tandem core` of its own), over the
vLLM engine contract the cores also serve (core/service/vllm_engine.py): the OpenAI SDK →
`smg launch --policy cache_aware --worker-urls grpc://A grpc://B` → the cores.

First, without smg: the contract straight against core A with the stubs of `smg-grpc-proto`
(what smg reads at registration, streamed and whole replies, Abort, a bad request). Then through
smg: chat and completions answer; requests that share a long prefix all land on one core, whose
prefix cache serves them; and core B, SIGKILLed mid-load, is routed around: its requests (which
had sent nothing) are retried on A, and every request sent after the kill completes. The tests
run in file order and the last one uses core B up.

The smg tests skip, and only when the `smg` binary is absent (TANDEM_REQUIRE_SMG=1 turns that
into a failure).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from smg_grpc_proto.generated import vllm_engine_pb2 as vpb
from smg_grpc_proto.generated import vllm_engine_pb2_grpc as vpb_grpc

from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import SERVER_MAX_MODEL_LEN, check_running, free_port, retry_on_taken_port
from tests.e2e.test_drain_failover import MODEL, _start_core, _stop
from tests.waiting import async_wait_until, wait_until

SMG = shutil.which("smg")
MAX_NUM_SEQS = 4  # SERVER_ENGINE_FLAGS
WORDS = ("red", "green", "blue", "gold", "grey", "pink", "teal", "white")
needs_smg = pytest.mark.skipif(
    SMG is None and os.environ.get("TANDEM_REQUIRE_SMG") != "1",
    reason="the smg binary is not installed (pip install smg==1.13.0)")


@dataclass(frozen=True)
class Worker:
    """A core behind smg: its gRPC address and its Prometheus series."""

    target: str
    metrics_url: str

    def metrics(self) -> dict[str, float]:
        body = httpx.get(self.metrics_url, timeout=5).text
        return {m[1]: float(m[2]) for m in re.finditer(r"^tandem:(\w+) (\S+)$", body, re.M)}


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smg")


@pytest.fixture(scope="module")
def core_b(server, tiny_models, logs):
    """A second core (test_drain_failover.py's: the `server` fixture's flags and environment,
    so it loads the buckets that fixture's core stored)."""
    core = _start_core(tiny_models["llama"], logs, "b")
    yield core
    _stop(core.process)


@pytest.fixture(scope="module")
def cores(server, core_b) -> list[Worker]:
    """A: the `server` fixture's core (its default model is the tiny Llama); B: `core_b`."""
    return [Worker(server.grpc_target, server.metrics_url),
            Worker(core_b.target, f"http://127.0.0.1:{core_b.metrics_port}/metrics")]


@pytest.fixture(scope="module")
def gateway(cores, tiny_models, logs):
    """`smg` over both cores, cache-aware, with the tiny model's tokenizer; its base URL once
    both workers are registered and healthy."""
    assert SMG is not None, "TANDEM_REQUIRE_SMG=1 and the smg binary is not installed"

    def start():
        port = free_port()
        log_path = logs / f"smg-{port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [SMG, "launch", "--host", "127.0.0.1", "--port", str(port),
                 "--worker-urls", *[f"grpc://{core.target}" for core in cores],
                 "--policy", "cache_aware", "--tokenizer-path", str(tiny_models["llama"]),
                 "--health-check-interval-secs", "1", "--health-failure-threshold", "1"],
                stdout=log_file, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _healthy_workers(base, process, log_path) == len(cores),
                       "smg registering both cores as healthy workers", timeout_s=120)
        except BaseException:
            _stop(process)
            raise
        return base, process

    base, process = retry_on_taken_port(start)
    yield base
    _stop(process)


def _healthy_workers(base: str, process: subprocess.Popen, log_path: Path) -> int:
    check_running(process, log_path)
    try:
        workers = httpx.get(f"{base}/workers", timeout=5).json()["workers"]
    except (httpx.HTTPError, ValueError, KeyError):
        return 0
    return sum(1 for worker in workers if worker.get("is_healthy"))


def _generate(stub, request_id: str, stream: bool, **params) -> list[vpb.GenerateResponse]:
    request = vpb.GenerateRequest(
        request_id=request_id, stream=stream,
        tokenized=vpb.TokenizedInput(input_ids=[1, 15, 27, 39, 41, 53]),
        sampling_params=vpb.SamplingParams(temperature=0, **params))
    return list(stub.Generate(request, timeout=60))


def test_the_vllm_contract_on_a_core(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = vpb_grpc.VllmEngineStub(channel)
        assert stub.HealthCheck(vpb.HealthCheckRequest(), timeout=5).healthy
        info = stub.GetModelInfo(vpb.GetModelInfoRequest(), timeout=5)
        assert (info.served_model_name, info.is_generation, info.max_context_length) == (
            MODEL, True, SERVER_MAX_MODEL_LEN)
        assert info.eos_token_ids and info.architectures == ["LlamaForCausalLM"]
        assert stub.GetServerInfo(vpb.GetServerInfoRequest(), timeout=5).max_num_seqs == \
            MAX_NUM_SEQS
        assert stub.GetLoads(vpb.GetLoadsRequest(), timeout=5).loads[0].max_running_requests \
            == MAX_NUM_SEQS

        # whole: one `complete` with every id; streamed: a chunk per step, then `complete`
        [whole] = _generate(stub, "whole", False, max_tokens=6, ignore_eos=True, logprobs=1)
        assert whole.complete.finish_reason == "length"
        assert len(whole.complete.output_ids) == whole.complete.completion_tokens == 6
        assert list(whole.complete.output_logprobs.token_ids) == list(whole.complete.output_ids)
        assert all(len(top.values) == 1 for top in whole.complete.output_logprobs.top_logprobs)
        *chunks, last = _generate(stub, "streamed", True, max_tokens=6, ignore_eos=True)
        assert all(reply.HasField("chunk") for reply in chunks) and last.HasField("complete")
        assert [i for c in chunks for i in c.chunk.token_ids] == list(whole.complete.output_ids)
        assert last.complete.finish_reason == "length"
        # the same engine path as Tandem's own Generate: the same greedy tokens
        tandem = pb_grpc.InferenceStub(channel).Generate(pb.GenerateRequest(
            tokens=pb.TokenIds(ids=[1, 15, 27, 39, 41, 53]),
            sampling=pb.SamplingParams(temperature=0),
            stopping=pb.StoppingCriteria(max_tokens=6, ignore_eos=True)), timeout=60)
        assert [i for r in tandem for c in r.choices for i in c.token_ids] == \
            list(whole.complete.output_ids)
        # a stop token id ends the choice and is named
        stop_id = whole.complete.output_ids[2]
        [stopped] = _generate(stub, "stopped", False, max_tokens=6, ignore_eos=True,
                              stop_token_ids=[stop_id])
        assert stopped.complete.matched_token_id == stop_id
        assert list(stopped.complete.output_ids) == list(whole.complete.output_ids[:3])

        # Abort names the vLLM request id: the stream ends with finish reason "abort"
        replies = stub.Generate(vpb.GenerateRequest(
            request_id="to-abort", stream=True, tokenized=vpb.TokenizedInput(input_ids=[1, 2]),
            sampling_params=vpb.SamplingParams(max_tokens=500, ignore_eos=True)), timeout=60)
        next(replies)
        stub.Abort(vpb.AbortRequest(request_ids=["to-abort"]), timeout=5)
        rest = list(replies)
        assert rest[-1].complete.finish_reason == "abort", rest[-1]
        assert sum(len(r.chunk.token_ids) for r in rest) < 499

        # bad input: INVALID_ARGUMENT naming the problem; the core carries on
        with pytest.raises(grpc.RpcError) as error:
            _generate(stub, "bad", False, max_tokens=2, logprobs=-1)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "logprobs" in error.value.details()
        assert stub.HealthCheck(vpb.HealthCheckRequest(), timeout=5).healthy


@needs_smg
def test_chat_and_completions_through_smg(gateway):
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello!"}], max_tokens=5,
        extra_body={"ignore_eos": True})
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 5
    assert chat.choices[0].message.content
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


@needs_smg
def test_a_shared_prefix_lands_on_one_core(cores, gateway):
    """Four chats that share a long system prompt: cache-aware routing sends all four to one
    core (whose `tandem:prompt_tokens_total` takes them all), and its prefix cache serves the
    shared part of the last three (`tandem:prefix_cache_hits_total`, and `cached_tokens` in the
    usage smg returns)."""
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    system = " ".join(f"rule {i}: answer briefly and politely." for i in range(20))
    before = [core.metrics() for core in cores]
    usages = []
    for question in ("What is one?", "And two?", "Three, then?", "Four?"):
        reply = client.chat.completions.create(
            model=MODEL, max_tokens=2, extra_body={"ignore_eos": True},
            messages=[{"role": "system", "content": system},
                      {"role": "user", "content": question}])
        usages.append(reply.usage)
    prompt_tokens = sum(usage.prompt_tokens for usage in usages)

    def grown(name: str) -> list[float]:
        return [core.metrics()[name] - old[name] for core, old in zip(cores, before, strict=True)]

    def counted() -> list[float] | None:  # (a core counts a prompt as its request finishes)
        took = grown("prompt_tokens_total")
        return took if sum(took) == prompt_tokens else None

    took = wait_until(counted, "the cores counting the four prompts")
    assert sorted(took) == [0, prompt_tokens], took  # one core took all four
    cached = [usage.prompt_tokens_details.cached_tokens for usage in usages]
    assert grown("prefix_cache_hits_total")[took.index(prompt_tokens)] == sum(cached), usages
    # the system prompt (less the page it ends in) came from the cache
    assert all(hit > usage.prompt_tokens / 2
               for hit, usage in zip(cached[1:], usages[1:], strict=True)), usages


@needs_smg
def test_a_killed_core_is_routed_around(cores, core_b, gateway):
    """SIGKILL core B while it holds a wave of long (non-streamed) completions. To send the wave
    to B, a fresh long prefix is sent alone until one lands on B (cache-aware routing puts a
    prefix it has not seen on a core by its own rule); the wave's prompts then share that prefix,
    so they follow it to B. B's requests had received nothing yet — a non-streamed reply is one
    message at the end — so smg retries them on A and none is lost; every request sent after the
    kill completes too."""
    worker_b = cores[1]
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    prefix = None
    for attempt in range(8):
        candidate = f"{attempt} " + " ".join(f"{word} {attempt}" for word in WORDS * 12)
        before = [core.metrics()["prompt_tokens_total"] for core in cores]
        reply = client.completions.create(model=MODEL, prompt=candidate, max_tokens=1)

        def counted(before=before, tokens=reply.usage.prompt_tokens) -> list[float] | None:
            grown = [core.metrics()["prompt_tokens_total"] - old
                     for core, old in zip(cores, before, strict=True)]
            return grown if sum(grown) >= tokens else None

        if wait_until(counted, "a core counting the prefix")[1] > 0:
            prefix = candidate
            break
    assert prefix is not None, "smg never put a fresh prefix on core B"

    async def complete(client: openai.AsyncOpenAI, index: int, tokens: int, text: str):
        try:
            return await client.completions.create(
                model=MODEL, max_tokens=tokens, extra_body={"ignore_eos": True},
                prompt=f"{text} {index}")
        except openai.APIError as error:
            return error

    async def scenario():
        client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0,
                                    timeout=120)
        load = [asyncio.create_task(complete(client, i, 200, prefix))
                for i in range(2 * MAX_NUM_SEQS)]
        held = await async_wait_until(lambda: _held(worker_b), "core B holding the wave",
                                      interval_s=0.01)
        core_b.process.send_signal(signal.SIGKILL)
        after = [await complete(client, i, 5, "after") for i in range(2 * MAX_NUM_SEQS)]
        return held, await asyncio.gather(*load), after

    held, load, after = asyncio.run(scenario())
    core_b.process.wait(timeout=10)
    assert held >= 1  # B held (part of) the wave when it died
    assert all(not isinstance(r, Exception) and r.usage.completion_tokens == 200
               for r in load), load
    assert all(not isinstance(r, Exception) and r.usage.completion_tokens == 5
               for r in after), after


def _held(core: Worker) -> int:
    gauges = core.metrics()
    return int(gauges["num_requests_running"] + gauges["num_requests_waiting"])
