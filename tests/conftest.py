"""Shared fixtures: tiny checkpoints written once per session with the project's own builder,
and one real `tandem serve` (core process + facade) that every end-to-end module shares."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


MODEL = "tiny-llama"  # the served model id of the `server` fixture
# Its context: room for a tool-calling prompt (the tools in the system prompt) and its answer.
SERVER_MAX_MODEL_LEN = 1024


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
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log_file = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "serve", "--model", str(tiny_models["llama"]),
         "--served-model-name", MODEL, "--port", str(http_port), "--grpc-port", str(grpc_port),
         "--max-model-len", str(SERVER_MAX_MODEL_LEN), "--max-num-seqs", "4",
         "--metrics-port", str(metrics_port)],
        stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    base = f"http://127.0.0.1:{http_port}"
    try:  # a start that fails or times out (pytest-timeout) must not leave the server running
        wait_for_http(f"{base}/ready", process, log_path, timeout_s=600)  # loaded 2-core hosts
        yield Served(base, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path,
                  timeout_s: float = 30.0) -> None:
    """Poll `url` until it answers 200; fail with the process's log if it dies or times out."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not answering in time:\n{log_path.read_text()}")
