"""Graceful drain and failover with real processes: two `tandem core`s (tiny Llama) behind one
`tandem facade` (`ipv4:127.0.0.1:P1,127.0.0.1:P2`, round_robin per RPC), plus a facade of its
own for the facade-drain case.

The tests run in file order and use the cores up: the spread check, then core B is SIGKILLed
mid-load, then a facade in front of core A is SIGTERMed mid-stream, then core A is SIGTERMed
with streams in flight. The tiny model makes ~200 tokens in 0.35 s, so "in flight" is made to
last by queueing several waves of 200-token streams behind `--max-num-seqs 4`. First, without
any process: facade/generation.py's retry of a call failing UNAVAILABLE before its first byte.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import (
    SERVER_ENGINE_FLAGS,
    check_running,
    core_env,
    free_port,
    retry_on_taken_port,
    server_buckets_stored,
    wait_for_http,
)
from tests.waiting import async_wait_until, wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama"
MAX_NUM_SEQS = 4  # as SERVER_ENGINE_FLAGS
TOKENS = 200  # per stream, ignore_eos
# The drain's upper bound: three waves of TOKENS-token streams must fit in it on a slow, loaded
# 2-core machine (at 10 s one loaded run cut the last wave: httpx.ReadError). The tests wait on
# the streams' ends, not on this bound, so a generous one costs nothing when all goes well.
DRAIN_TIMEOUT_S = 60
INFERENCE = "tandem.v1.Inference"


@dataclass
class Core:
    name: str
    port: int
    metrics_port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        body = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return {m[1]: float(m[2]) for m in re.finditer(r"^tandem:(\w+) (\S+)$", body, re.M)}

    def log(self) -> str:
        return self.log_path.read_text()


def _health(target: str, service: str = INFERENCE) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2).status


def _start_core(model: Path, logs: Path, name: str) -> Core:
    """A ready `tandem core` on free ports (new ones if a port was taken before it bound)."""

    def start() -> Core:
        port, metrics_port = free_port(), free_port()
        log_path = logs / f"core-{name}-{port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "core", "--model", str(model),
                 "--embedding-model", "none", "--served-model-name", MODEL,
                 "--grpc-port", str(port), *SERVER_ENGINE_FLAGS,
                 "--drain-timeout-s", str(DRAIN_TIMEOUT_S),
                 "--metrics-port", str(metrics_port)],
                # the `server` fixture's environment (JSON logs): its stored buckets load
                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT, env=core_env())
        core = Core(name, port, metrics_port, process, log_path)
        try:
            _wait_ready(core)
        except BaseException:
            _stop(process)
            raise
        return core

    return retry_on_taken_port(start)


def _wait_ready(core: Core, within_s: float = 480) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        check_running(core.process, core.log_path)
        try:
            if _health(core.target) == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    pytest.fail(f"core {core.name} not ready in time:\n{core.log()}")


def _start_facade(core_target: str, logs: Path, name: str, **env: str):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_API_KEYS")}

    def start():
        port = free_port()
        log_path = logs / f"facade-{name}-{port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "facade", "--core", core_target,
                 "--port", str(port)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**clean, "TANDEM_LOG_FORMAT": "text", **env})
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{base}/health", process, log_path)
        except BaseException:
            _stop(process)
            raise
        return base, process, log_path

    return retry_on_taken_port(start)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("drain-failover")


@pytest.fixture(scope="module")
def cores(tiny_models, logs):
    """Cores A and B with the `server` fixture's engine flags and environment (`core_env()`).
    Once that fixture's core has stored its buckets, each loads them all and warms up in
    seconds: they start together. Otherwise (this module run without it) A compiles and stores
    them first and B then loads them (two cold cores compiling at once on 2 CPUs take twice as
    long)."""
    started: list[Core] = []
    try:
        if server_buckets_stored():
            started += _start_together(tiny_models["llama"], logs, ("a", "b"))
        else:
            for name in ("a", "b"):
                started.append(_start_core(tiny_models["llama"], logs, name))
        yield started
    finally:
        for core in started:
            _stop(core.process)


def _start_together(model: Path, logs: Path, names: tuple[str, ...]) -> list[Core]:
    """`_start_core` for each name at once; if one fails, the others are stopped."""
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(_start_core, model, logs, name) for name in names]
    failures = [future.exception() for future in futures if future.exception() is not None]
    if failures:
        for future in futures:
            if future.exception() is None:
                _stop(future.result().process)
        raise failures[0]
    return [future.result() for future in futures]


@pytest.fixture(scope="module")
def facade(cores, logs):
    """One facade balancing over both cores."""
    target = "ipv4:" + ",".join(core.target for core in cores)
    base, process, _ = _start_facade(target, logs, "both", TANDEM_LOG_LEVEL="INFO")
    yield base
    _stop(process)


def _chat(stream: bool, max_tokens: int = TOKENS) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": stream,
            "stream_options": {"include_usage": True}} if stream else {
            "model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "ignore_eos": True}


@dataclass
class StreamResult:
    status: int
    events: list[dict] | None = None
    done: bool = False

    @property
    def error(self) -> dict | None:
        return next((e["error"] for e in self.events or [] if "error" in e), None)

    @property
    def completion_tokens(self) -> int | None:
        return next((e["usage"]["completion_tokens"] for e in self.events or []
                     if e.get("usage")), None)

    @property
    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for e in self.events or [] for c in e.get("choices", [])
                if c.get("finish_reason")]


async def _stream(client: httpx.AsyncClient, base: str,
                  first_event: asyncio.Event | None = None) -> StreamResult:
    async with client.stream("POST", f"{base}/v1/chat/completions", json=_chat(True)) as response:
        result = StreamResult(response.status_code, [])
        if response.status_code != 200:
            await response.aread()
            result.events.append(response.json())
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                result.done = True
                continue
            assert not result.done, "an event after [DONE]"
            result.events.append(json.loads(line[len("data: "):]))
            if first_event is not None:
                first_event.set()
        return result


def _assert_complete(result: StreamResult) -> None:
    assert result.status == 200, result.events
    assert result.done and result.error is None, result.events
    assert result.completion_tokens == TOKENS and result.finish_reasons == ["length"]


# ---------------------------------------------------------------------------------------------


class _FakeCall:
    """A Generate call that fails UNAVAILABLE at its first read, or streams `messages`."""

    def __init__(self, messages: list[pb.GenerateResponse] | None):
        self._messages = messages

    async def read(self):
        if self._messages is None:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                       grpc.aio.Metadata(), details="core draining")
        return self._messages.pop(0) if self._messages else grpc.aio.EOF

    def done(self) -> bool:
        return False

    def cancel(self) -> bool:
        return True


class _FakeStub:
    def __init__(self, failures: int):
        self.failures, self.calls = failures, 0

    def Generate(self, request, metadata, timeout):  # noqa: N802 (the stub's method name)
        self.calls += 1
        if self.calls <= self.failures:
            return _FakeCall(None)
        return _FakeCall([pb.GenerateResponse(model=MODEL)])


@pytest.mark.parametrize(("failures", "opened"), [(2, True), (3, False)])
def test_unavailable_before_the_first_response_is_retried(failures, opened):
    """facade/generation.py's own failover (below it, the channel's gRPC retry policy): a call
    failing UNAVAILABLE before any response is opened again, up to OPEN_ATTEMPTS times."""
    from facade.errors import ApiError
    from facade.generation import OPEN_ATTEMPTS, CallOptions, Generation

    stub = _FakeStub(failures)
    options = CallOptions(request_id="r", timeout_s=5)
    if opened:
        generation = asyncio.run(Generation.open(stub, [pb.GenerateRequest()], options))
        assert generation.model == MODEL and stub.calls == failures + 1
    else:
        with pytest.raises(ApiError) as error:
            asyncio.run(Generation.open(stub, [pb.GenerateRequest()], options))
        assert error.value.status_code == 503 and stub.calls == OPEN_ATTEMPTS


def test_requests_spread_over_both_cores(cores, facade):
    before = [core.metrics()["generation_tokens_total"] for core in cores]
    with httpx.Client(timeout=30) as client:
        for _ in range(6):
            response = client.post(f"{facade}/v1/chat/completions", json=_chat(False, 5))
            assert response.status_code == 200, response.text

    def generated() -> list[float]:
        after = [core.metrics()["generation_tokens_total"] for core in cores]
        return [a - b for a, b in zip(after, before, strict=True)]

    # The cores count a request's tokens as it finishes, which may be after its last byte.
    def counted() -> list[float] | None:
        tokens = generated()
        return tokens if sum(tokens) == 6 * 5 else None

    spread = wait_until(counted, "the cores counting 6 requests of 5 tokens")
    assert all(tokens > 0 for tokens in spread), spread


def test_killing_a_core_mid_load_loses_no_unstarted_request(cores, facade):
    """SIGKILL core B while it runs one wave and queues another: its queued requests (no byte
    sent yet) are retried on A and complete; its running streams end with an error event and
    [DONE]; requests sent after the kill all complete."""
    _, core_b = cores

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            tokens_before = core_b.metrics()["generation_tokens_total"]  # (earlier tests' too)
            load = [asyncio.create_task(_stream(client, facade)) for _ in range(4 * MAX_NUM_SEQS)]

            def loaded() -> bool:  # B has a wave running (tokens flowing) and requests queued
                gauges = core_b.metrics()
                flowing = gauges["generation_tokens_total"] - tokens_before >= 2 * MAX_NUM_SEQS
                return (gauges["num_requests_running"] >= 1 and flowing
                        and gauges["num_requests_waiting"] >= 1)

            await async_wait_until(loaded, "core B running a wave with another queued",
                                   interval_s=0.01)
            core_b.process.send_signal(signal.SIGKILL)
            after = [asyncio.create_task(_stream(client, facade)) for _ in range(MAX_NUM_SEQS)]
            return await asyncio.gather(*load), await asyncio.gather(*after)

    load, after = asyncio.run(scenario())
    core_b.process.wait(timeout=10)
    cut = [r for r in load if r.error is not None]
    assert cut, "no stream was cut: the kill came too late"
    for result in cut:  # had started streaming (200, a first chunk), then ended loudly
        assert result.status == 200 and "error" not in result.events[0], result.events
        assert result.done, "a cut stream must still end with [DONE]"
        assert result.error["code"] == "service_unavailable", result.error
        assert (result.completion_tokens or 0) < TOKENS
    # only B's running wave can be cut; B's queued requests had sent nothing and are not lost
    assert len(cut) <= MAX_NUM_SEQS
    for result in [r for r in load if r.error is None] + list(after):
        _assert_complete(result)


def test_facade_drain_finishes_in_flight_streams(cores, logs):
    """SIGTERM a facade mid-stream: it stops accepting, yet every in-flight request (streams
    already sending and requests still queued at the core) finishes with [DONE]."""
    core_a = cores[0]
    base, process, log_path = _start_facade(core_a.target, logs, "drain",
                                            TANDEM_DRAIN_TIMEOUT_S=str(DRAIN_TIMEOUT_S))

    async def scenario():
        first = asyncio.Event()
        async with httpx.AsyncClient(timeout=60) as client:
            streams = [asyncio.create_task(_stream(client, base, first if i == 0 else None))
                       for i in range(3 * MAX_NUM_SEQS)]
            await asyncio.wait_for(first.wait(), 20)

            def all_at_the_core() -> bool:  # the facade has passed on every request (running,
                gauges = core_a.metrics()  # queued or done): none is still unread in its socket
                done = sum(stream.done() for stream in streams)
                return (gauges["num_requests_running"] + gauges["num_requests_waiting"] + done
                        >= len(streams))

            await async_wait_until(all_at_the_core, "every stream's request at the core")
            process.send_signal(signal.SIGTERM)
            running = core_a.metrics()["num_requests_running"]

            async def refused() -> bool:  # no longer accepting
                try:
                    await client.get(f"{base}/health")
                except httpx.ConnectError:
                    return True
                return False

            await async_wait_until(refused, "the draining facade refusing connections")
            return await asyncio.gather(*streams), running

    try:
        results, running = asyncio.run(scenario())
        assert running >= 1, "the streams were over before SIGTERM"
        for result in results:
            _assert_complete(result)
        process.wait(timeout=DRAIN_TIMEOUT_S)
    finally:
        _stop(process)


def test_core_drain_finishes_streams_and_refuses_new_ones(cores):
    """SIGTERM core A with 3 waves of streams in flight: all finish with every token, readiness
    turns NOT_SERVING, new Generate calls get UNAVAILABLE at once, and it exits 0 in time."""
    core_a = cores[0]
    request = pb.GenerateRequest(
        model=MODEL, text="once upon a time", sampling=pb.SamplingParams(temperature=1.0),
        stopping=pb.StoppingCriteria(max_tokens=TOKENS, ignore_eos=True))

    async def collect(call) -> tuple[int, list[int]]:
        tokens, reasons = 0, []
        while (response := await call.read()) is not grpc.aio.EOF:
            for choice in response.choices:
                tokens += len(choice.token_ids)
                if choice.finish_reason:
                    reasons.append(choice.finish_reason)
        return tokens, reasons

    async def scenario():
        async with grpc.aio.insecure_channel(core_a.target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            calls = [stub.Generate(request, timeout=60) for _ in range(3 * MAX_NUM_SEQS)]
            first = await calls[0].read()  # the first wave is decoding
            assert first.choices
            running = core_a.metrics()
            core_a.process.send_signal(signal.SIGTERM)
            streams = [asyncio.create_task(collect(call)) for call in calls[1:]]
            health = health_pb2_grpc.HealthStub(channel)

            async def not_serving() -> bool:  # readiness drops while the drain goes on
                return (await health.Check(health_pb2.HealthCheckRequest(service=INFERENCE),
                                           timeout=10)).status \
                    == health_pb2.HealthCheckResponse.NOT_SERVING

            await async_wait_until(not_serving, "readiness NOT_SERVING", interval_s=0.01)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Generate(request, timeout=10):
                    pass
            # Refused "at once": while admitted streams are still being served, not after.
            unfinished = [not s.done() for s in streams].count(True)
            rest_of_first = await collect(calls[0])
            return (running, unfinished, refused.value.code(), rest_of_first,
                    await asyncio.gather(*streams), first)

    running, unfinished, code, rest_of_first, results, first = asyncio.run(scenario())
    assert running["num_requests_running"] == MAX_NUM_SEQS  # the other waves queue behind
    assert unfinished >= 1, "the streams were over before the checks: no drain was tested"
    assert code == grpc.StatusCode.UNAVAILABLE
    first_tokens = sum(len(c.token_ids) for c in first.choices) + rest_of_first[0]
    assert first_tokens == TOKENS and rest_of_first[1] == [pb.FINISH_REASON_LENGTH]
    for tokens, reasons in results:
        assert tokens == TOKENS and reasons == [pb.FINISH_REASON_LENGTH]
    assert core_a.process.wait(timeout=DRAIN_TIMEOUT_S + 5) == 0
    assert "core stopped" in core_a.log()
