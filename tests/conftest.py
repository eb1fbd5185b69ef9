"""Shared fixtures: tiny checkpoints written once per session with the project's own builder,
and one real `tandem serve` (core process + facade) that every end-to-end module shares."""

from __future__ import annotations

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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
apply_defaults()  # in-process engines run with the XLA flags `tandem core` sets


@pytest.fixture(scope="session", autouse=True)
def tandem_home(tmp_path_factory) -> Path:
    """Keep the demo model and compilation cache of test runs out of the user's ~/.cache."""
    home = tmp_path_factory.mktemp("tandem-home")
    os.environ["TANDEM_HOME"] = str(home)
    _share_compilations(home / "jax-cache")
    return home


def _share_compilations(cache_dir: Path) -> None:
    """Engines of the same shapes in one test session compile once (XLA's persistent cache)."""
    try:
        import jax
    except ImportError:  # the facade-only environment
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from core.models.tiny import VARIANTS, write_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {variant: write_tiny_model(root / variant, variant, seed=0) for variant in VARIANTS}


@dataclass
class InProcessCore:
    server: object  # core.service.server.CoreServer, running in this process (its engine is reachable)
    port: int  # its gRPC port on 127.0.0.1
    # (readiness, liveness) health statuses seen after start() and before load()
    health_before_load: tuple[int, int]


GRPC_CORE_MODEL = "tiny-llama"  # the generative model id of `grpc_core`
GRPC_CORE_EMBEDDING_MODEL = "all-MiniLM-L6-v2"  # its embedding model id


@pytest.fixture(scope="session")
async def grpc_core(tiny_models):
    """One in-process core for every module that drives the core over gRPC and reaches into its
    engine: the tiny Llama (max_model_len 128, 4 rows: few buckets) and the bundled MiniLM.
    Loaded once per session; health is read between start() and load() for the readiness test."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from core.config import EngineConfig, ServerConfig
    from core.models.bundled import default_embedding_model_dir
    from core.service.server import CoreServer

    config = ServerConfig(model_dir=Path(tiny_models["llama"]), model_name=GRPC_CORE_MODEL,
                          grpc_port=0, engine=EngineConfig(max_model_len=128, max_num_seqs=4),
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
# The `server` fixture's engine: small limits, so that warm-up compiles few shape buckets; other
# modules' cores use the same flags, so they load every bucket from the session's store of
# compiled buckets ($TANDEM_HOME/jax-cache/executables).
# float32: the tests compare it with Hugging Face in float32 (`--dtype auto` would pick
# bfloat16 on a CPU with AVX512-BF16).
SERVER_ENGINE_FLAGS = ("--max-model-len", str(SERVER_MAX_MODEL_LEN), "--max-num-seqs", "4",
                       "--max-num-batched-tokens", "128", "--dtype", "float32")  # fmt: skip


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


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory):
    """`tandem serve` on free ports, once per session; ready once /ready says the core is."""
    log_dir = tmp_path_factory.mktemp("serve")

    def start() -> tuple[subprocess.Popen, Served]:
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        log_path = log_dir / f"serve-{http_port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "serve", "--model", str(tiny_models["llama"]),
                 "--served-model-name", MODEL, "--port", str(http_port),
                 "--grpc-port", str(grpc_port), *SERVER_ENGINE_FLAGS,
                 "--metrics-port", str(metrics_port)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
                env={**os.environ, "JAX_PLATFORMS": "cpu"})
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_for_http(f"{base}/ready", process, log_path, timeout_s=480)
        except BaseException:
            stop_process(process)
            raise
        return process, Served(base, f"127.0.0.1:{grpc_port}",
                               f"http://127.0.0.1:{metrics_port}/metrics")

    process, served = retry_on_taken_port(start)
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
