"""Shared fixtures: tiny checkpoints written once per session with the project's own builder,
and one real `tandem serve` (core process + facade) that every end-to-end module shares."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from core.xla_flags import apply_defaults  # stdlib only

# The suite compiles at XLA's lowest backend (LLVM) optimization level: its engines are tiny and
# run few steps, so compiling is most of its time, and level 0 cuts a warm-up's CPU time by 40%
# (59 → 33 CPU seconds, process start included, for the `server` fixture's engine on a 2-core
# AVX2 machine) without changing what is computed — the parity tests hold at their tolerances.
# `tandem` itself and every benchmark under scripts/ run at XLA's default level. Every process
# of the session uses it (`core_env()`, `xla_test_env()`), so the store of compiled buckets stays
# shared.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_test_env(device_count: int | None = None) -> str:
    """The XLA_FLAGS of a test process: the suite's level, and `device_count` virtual CPU
    devices when given."""
    devices = f" --xla_force_host_platform_device_count={device_count}" if device_count else ""
    return TEST_XLA_FLAGS + devices


if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
apply_defaults()  # in-process engines run with the XLA flags `tandem core` sets
# The platform of every subprocess core (`core_env()`), here too unless told otherwise: the
# `TANDEM_*`, `XLA_*` and `JAX_*` environment is part of the key of a stored compiled bucket
# (core/engine/executables.py), so engines in this process load the buckets subprocess cores
# stored only where their environments are equal.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def core_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess `tandem core` / `tandem serve`: this process's on the CPU,
    so that it loads the buckets other cores stored, and stores buckets that they and this
    process's engines load. Any `extra` variable named TANDEM_*, XLA_* or JAX_* gives it store
    keys of its own: it would compile every bucket again."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", **extra}


@pytest.fixture(scope="session", autouse=True)
def tandem_home(tmp_path_factory) -> Path:
    """Keep the demo model and compiled buckets of test runs out of the user's ~/.cache."""
    home = tmp_path_factory.mktemp("tandem-home")
    os.environ["TANDEM_HOME"] = str(home)
    _share_compilations(home / "jax-cache")
    return home


def _share_compilations(cache_dir: Path) -> None:
    """Engines of one test session share what they compile. Subprocess cores keep their warm-up's
    executables in the store of compiled buckets ($TANDEM_HOME/jax-cache/executables, as
    `tandem core` does), and engines in this process load from it every bucket a core of the
    same model shape, engine config and environment stored (core/engine/executables.py). What
    this process compiles goes through XLA's persistent cache (in $TANDEM_HOME/jax-cache):
    engines of equal shapes, and jitted functions outside warm-up (samplers, one-off runners),
    compile once. (The store takes nothing from this process while that cache is on.)"""
    try:
        import jax

        from core.engine import executables
    except ImportError:  # the facade-only environment
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    executables.configure(cache_dir / "executables")
    logging.getLogger(executables.__name__).addFilter(_NotStoredHere())


class _NotStoredHere(logging.Filter):
    """Drops the store's warning that it keeps nothing while XLA's persistent cache is on: in
    this process that is the plan (`_share_compilations`), not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "persistent compilation cache is on" not in record.getMessage()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from core.models.tiny import ALL_VARIANTS, write_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {variant: write_tiny_model(root / variant, variant, seed=0)
            for variant in ALL_VARIANTS}


RERANK_MODEL = "tiny-reranker"  # the `server` fixture's reranking model id


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """The tiny random BERT cross-encoder (core/models/tiny_cross_encoder.py), once a session."""
    from core.models.tiny_cross_encoder import write_tiny_cross_encoder

    return write_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@dataclass
class InProcessCore:
    # core.service.server.CoreServer, running in this process (its engine is reachable)
    server: object
    port: int  # its gRPC port on 127.0.0.1
    # (readiness, liveness) health statuses seen after start() and before load()
    health_before_load: tuple[int, int]


GRPC_CORE_MODEL = "tiny-llama"  # the generative model id of `grpc_core`
GRPC_CORE_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # its embedding model id


@pytest.fixture(scope="session")
async def grpc_core(tiny_models):
    """One in-process core for every module that drives the core over gRPC and reaches into its
    engine: the tiny Llama (max_model_len 128, 4 rows, 128-token steps: few buckets) and the
    bundled MiniLM (whose buckets load from the store when the `server` fixture's core has filled
    it). Loaded once per session; health is read between start() and load() for the readiness
    test."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from core.config import EngineConfig, ServerConfig
    from core.models.bundled import default_embedding_model_dir
    from core.service.server import CoreServer

    config = ServerConfig(model_dir=Path(tiny_models["llama"]), model_name=GRPC_CORE_MODEL,
                          grpc_port=0, engine=EngineConfig(max_model_len=128, max_num_seqs=4,
                                                           max_num_batched_tokens=128),
                          embedding_model_dir=default_embedding_model_dir(),
                          embedding_model_name=GRPC_CORE_EMBEDDING_MODEL)
    server = CoreServer(config)
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        ready = await health.Check(health_pb2.HealthCheckRequest(service="tandem.v1.Inference"))
        live = await health.Check(health_pb2.HealthCheckRequest(service=""))
    await server.load()
    yield InProcessCore(server, port, (ready.status, live.status))
    await server.drain_and_stop()


def free_port() -> int:
    """A loopback port free now. A child process binds it later, so another process may take it
    meanwhile: start servers with `retry_on_taken_port`, which picks new ports when that happens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What uvicorn, prometheus_client and the core's gRPC server print when a port is taken.
BIND_FAILURE_MARKS = ("address already in use", "cannot bind", "failed to bind")
# Fresh-port attempts of `retry_on_taken_port` (a taken port is rare; twice in a row rarer).
PORT_ATTEMPTS = 3
T = TypeVar("T")


class PortTaken(Exception):
    """A server process exited because a port picked for it was taken before it bound it."""


def check_running(process: subprocess.Popen, log_path: Path) -> None:
    """Fail with the process's log if it exited (PortTaken if it could not bind a port)."""
    if process.poll() is None:
        return
    log = log_path.read_text()
    if any(mark in log.lower() for mark in BIND_FAILURE_MARKS):
        raise PortTaken(log)
    pytest.fail(f"the server process exited with {process.returncode}:\n{log}")


def retry_on_taken_port(start: Callable[[], T]) -> T:
    """`start()` (which picks its ports with `free_port`) again with new ports if a port was
    taken between picking and binding."""
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            return start()
        except PortTaken:
            continue
    return start()


MODEL = "tiny-llama"  # the served model id of the `server` fixture
# Its context: room for a tool-calling prompt (the tools in the system prompt) and its answer.
SERVER_MAX_MODEL_LEN = 1024
SERVER_MAX_NUM_SEQS = 4
SERVER_MAX_NUM_BATCHED_TOKENS = 128
# The `server` fixture's engine: small limits, so that warm-up compiles few shape buckets; other
# modules' cores use the same flags, so they load every bucket from the session's store of
# compiled buckets ($TANDEM_HOME/jax-cache/executables).
# float32: the tests compare it with Hugging Face in float32 (`--dtype auto` would pick
# bfloat16 on a CPU with AVX512-BF16).
# Encoder calls of at most 16 rows: MiniLM compiles 15 shapes instead of 40 (no packed calls;
# tests/core/models/test_bert.py and test_cross_encoder.py check packing in-process).
SERVER_ENGINE_FLAGS = ("--max-model-len", str(SERVER_MAX_MODEL_LEN),
                       "--max-num-seqs", str(SERVER_MAX_NUM_SEQS),
                       "--max-num-batched-tokens", str(SERVER_MAX_NUM_BATCHED_TOKENS),
                       "--dtype", "float32", "--encoder-max-batch-rows", "16")  # fmt: skip


def server_engine_config():
    """SERVER_ENGINE_FLAGS as the EngineConfig of an in-process engine (`create_engine`,
    `CoreServer`): on the tiny Llama it loads every bucket the `server` fixture's core stored,
    instead of compiling its own."""
    from core.config import EngineConfig

    return EngineConfig(max_model_len=SERVER_MAX_MODEL_LEN, max_num_seqs=SERVER_MAX_NUM_SEQS,
                        max_num_batched_tokens=SERVER_MAX_NUM_BATCHED_TOKENS, dtype="float32")


# The tiny families test_tools_grpc's cores serve (its "none" is a Llama) and the context their
# tool prompts need: Llama 3.1's JSON tool format writes the two tools out at length (~1,050
# tokens of the tiny tokenizer, more than SERVER_MAX_MODEL_LEN).
TOOL_CORE_MAX_MODEL_LEN = {"llama": SERVER_MAX_MODEL_LEN, "llama3": 2048,
                           "mistral": SERVER_MAX_MODEL_LEN, "qwen2": SERVER_MAX_MODEL_LEN}


def family_engine_config(variant: str):
    """The engine of a tiny model of `variant` in test_structured's `family` and, for the
    families of TOOL_CORE_MAX_MODEL_LEN, in test_tools_grpc's cores: one config per family, so
    that its buckets compile once a session. The Llama's is the `server` fixture's (its buckets
    load from that core's store); the other tool families' compile in the `family` engine (2
    rows: fewer and smaller buckets), and the cores find them in XLA's persistent cache. Other
    families get few, small buckets (256 tokens)."""
    from core.config import EngineConfig

    if variant == "llama":
        return server_engine_config()
    if variant in TOOL_CORE_MAX_MODEL_LEN:
        return EngineConfig(max_model_len=TOOL_CORE_MAX_MODEL_LEN[variant], max_num_seqs=2,
                            max_num_batched_tokens=SERVER_MAX_NUM_BATCHED_TOKENS, dtype="float32")
    return EngineConfig(max_model_len=256, max_num_seqs=2, max_num_batched_tokens=64)


@dataclass(frozen=True)
class Served:
    base: str  # the facade's URL
    grpc_target: str  # the core's address
    metrics_url: str  # the core's Prometheus endpoint

    def count_tokens(self, **tokenize_request) -> int:
        """Prompt tokens as the core's own Tokenize RPC counts them."""
        import grpc

        from tandem.v1 import inference_pb2 as pb
        from tandem.v1 import inference_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = pb_grpc.InferenceStub(channel)
            return len(stub.Tokenize(pb.TokenizeRequest(**tokenize_request)).token_ids)


_server_ready = False  # the `server` fixture's core is ready: its buckets are in the store


def server_buckets_stored() -> bool:
    """Whether the session's store of compiled buckets holds every bucket of SERVER_ENGINE_FLAGS
    on the tiny Llama (and of the bundled MiniLM): the `server` fixture's core stored them."""
    return _server_ready


@pytest.fixture(scope="session")
def server(tiny_models, tiny_cross_encoder, tmp_path_factory):
    """`tandem serve` on free ports, once per session; ready once /ready says the core is. It
    serves the tiny Llama, the bundled MiniLM and the tiny cross-encoder (for rerank)."""
    log_dir = tmp_path_factory.mktemp("serve")

    def start() -> tuple[subprocess.Popen, Served]:
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        log_path = log_dir / f"serve-{http_port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "serve", "--model", str(tiny_models["llama"]),
                 "--served-model-name", MODEL, "--port", str(http_port),
                 "--grpc-port", str(grpc_port), *SERVER_ENGINE_FLAGS,
                 "--rerank-model", str(tiny_cross_encoder), "--rerank-model-name", RERANK_MODEL,
                 "--metrics-port", str(metrics_port)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
                env=core_env())
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_for_http(f"{base}/ready", process, log_path, timeout_s=480)
        except BaseException:
            stop_process(process)
            raise
        return process, Served(base, f"127.0.0.1:{grpc_port}",
                               f"http://127.0.0.1:{metrics_port}/metrics")

    global _server_ready
    process, served = retry_on_taken_port(start)
    _server_ready = True
    try:
        yield served
    finally:
        stop_process(process, timeout_s=60)


def stop_process(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path,
                  timeout_s: float = 60.0) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it dies (PortTaken if it
    could not bind) or times out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_running(process, log_path)
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not answering in time:\n{log_path.read_text()}")
