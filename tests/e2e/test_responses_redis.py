"""The Redis response store with several facade replicas: two facade processes in front of the
session's `tandem serve` core share one real `redis-server` (started here on a free port), so a
conversation started on one continues on the other; Redis going away mid-test is a clear 503
(bounded in time, never a 500 or a hang), and once it is back (empty) an old id is a 404 and
new responses are stored again.

Needs the `redis-server` binary (Debian package `redis-server`); without it the module skips,
unless TANDEM_REQUIRE_REDIS=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL, free_port, wait_for_http

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
)
if REDIS_SERVER is None:
    if os.environ.get("TANDEM_REQUIRE_REDIS") == "1":
        pytest.fail("redis-server is not installed (apt-get install redis-server)",
                    pytrace=False)  # fmt: skip
    pytest.skip("redis-server is not installed", allow_module_level=True)

# The longest a request may take while Redis is down: the store's timeouts bound it far lower.
NO_HANG_S = 30.0
STORE_TIMEOUT_S = 1.0


class RedisServer:
    """A throw-away redis-server on a loopback port, without persistence."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port, self.log_path = port, log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=open(self.log_path, "a"), stderr=subprocess.STDOUT)  # fmt: skip
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        pytest.fail(f"redis-server not answering:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis") / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def facades(server, redis_server, tmp_path_factory):
    """Two facade processes sharing the session core and the Redis store."""
    logs = tmp_path_factory.mktemp("redis-facades")
    env = {**os.environ, "TANDEM_LOG_FORMAT": "text",
           "TANDEM_RESPONSES_STORE_URL": f"redis://127.0.0.1:{redis_server.port}/0",
           "TANDEM_RESPONSES_STORE_TIMEOUT_S": str(STORE_TIMEOUT_S)}  # fmt: skip
    started, bases = [], []
    try:
        for name in ("a", "b"):
            port, log_path = free_port(), logs / f"facade-{name}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "facade", "--core-address", server.grpc_target,
                 "--port", str(port)],
                stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                env=env)  # fmt: skip
            started.append(process)
            wait_for_http(f"http://127.0.0.1:{port}/ready", process, log_path, timeout_s=60)
            bases.append(f"http://127.0.0.1:{port}")
        yield bases
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def _create(base: str, **body) -> httpx.Response:
    body = {"model": MODEL, "max_output_tokens": 4, "ignore_eos": True, **body}
    return httpx.post(f"{base}/v1/responses", json=body, timeout=NO_HANG_S)


def test_a_conversation_continues_across_two_facades(facades):
    a, b = facades
    first = _create(a, input="Remember: " + " ".join(f"w{i}" for i in range(30)))
    assert first.status_code == 200, first.text
    first_id = first.json()["id"]
    second = _create(b, input="And the first word?", previous_response_id=first_id)
    assert second.status_code == 200, second.text
    usage = second.json()["usage"]
    assert usage["input_tokens"] > first.json()["usage"]["input_tokens"]
    assert usage["input_tokens_details"]["cached_tokens"] >= 16  # the first turn, cached
    assert httpx.get(f"{b}/v1/responses/{first_id}").json() == first.json()
    assert httpx.delete(f"{b}/v1/responses/{first_id}").json()["deleted"] is True
    gone = httpx.get(f"{a}/v1/responses/{first_id}")
    assert gone.status_code == 404
    again = _create(a, input="x", previous_response_id=first_id)
    assert again.status_code == 404 and again.json()["error"]["param"] == "previous_response_id"


def test_redis_restarting_is_a_clear_503_then_404_never_a_500_or_a_hang(facades, redis_server):
    a, b = facades
    kept = _create(a, input="before the restart")
    assert kept.status_code == 200
    kept_id = kept.json()["id"]
    redis_server.stop()
    try:
        for base in (a, b):
            started = time.monotonic()
            answers = [
                _create(base, input="continue", previous_response_id=kept_id),
                _create(base, input="store me"),
                httpx.get(f"{base}/v1/responses/{kept_id}", timeout=NO_HANG_S),
                httpx.delete(f"{base}/v1/responses/{kept_id}", timeout=NO_HANG_S),
            ]
            assert time.monotonic() - started < NO_HANG_S
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "service_unavailable"
            assert _create(base, input="no store", store=False).status_code == 200
            stream = httpx.post(f"{base}/v1/responses", timeout=NO_HANG_S, json={
                "model": MODEL, "input": "x", "stream": True, "max_output_tokens": 2})
            assert stream.status_code == 503  # before the first byte: a real status
    finally:
        redis_server.start()  # the same port, empty: what a restarted Redis without a volume has
    lost = _create(b, input="continue", previous_response_id=kept_id)
    assert lost.status_code == 404 and lost.json()["error"]["param"] == "previous_response_id"
    fresh = _create(a, input="after the restart")
    assert fresh.status_code == 200
    assert httpx.get(f"{b}/v1/responses/{fresh.json()['id']}").status_code == 200
