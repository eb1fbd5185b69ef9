"""Limits and last-resort paths: body size (declared and chunked), deadlines, unhandled bugs."""

from __future__ import annotations

import json

import httpx
import pytest

from facade.app import create_app
from facade.settings import FacadeSettings
from tests.facade.conftest import start_facade, stop_facade

USER = [{"role": "user", "content": "one two three"}]


@pytest.fixture(scope="module")
def tight_facade_url(background, core_double):
    """A facade with a 1000-byte body limit and a 2 s core deadline: well after the "slow"
    model's first word even on a loaded machine, well before its last (~10 s)."""
    settings = FacadeSettings(
        core_address=f"127.0.0.1:{core_double[2]}", max_body_bytes=1000, request_timeout_s=2.0
    )
    facade = background.run(start_facade(settings))
    yield facade.base_url
    background.run(stop_facade(facade))


@pytest.fixture(scope="module")
def client(tight_facade_url):
    with httpx.Client(base_url=tight_facade_url, timeout=10) as client:
        yield client


def test_declared_body_too_large_is_413_envelope(client):
    response = client.post("/v1/completions", json={"prompt": "x" * 2000})
    assert response.status_code == 413 and response.headers["x-request-id"]
    assert response.json()["error"]["code"] == "request_too_large"


def test_chunked_body_too_large_is_413_envelope(client):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}'

    response = client.post(
        "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.headers["x-request-id"]
    assert response.json()["error"]["code"] == "request_too_large"


def test_small_body_passes(client):
    assert client.post("/v1/completions", json={"prompt": "a b"}).status_code == 200


def test_deadline_is_504(client):
    response = client.post("/v1/chat/completions", json={"model": "slow", "messages": USER})
    assert response.status_code == 504
    error = response.json()["error"]
    assert "deadline" in error.pop("message").lower()  # gRPC's "Deadline Exceeded"
    assert error == {"type": "server_error", "param": None, "code": "timeout"}


def test_deadline_mid_stream_is_an_error_event(client):
    body = {"model": "slow", "messages": USER, "stream": True}
    lines = [
        line for line in client.post("/v1/chat/completions", json=body).text.split("\n") if line
    ]
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[-2].removeprefix("data: "))["error"]["code"] == "timeout"


def test_insane_request_id_is_replaced(client):
    response = client.get("/health", headers={"x-request-id": "x" * 500})
    assert response.headers["x-request-id"] != "x" * 500
    assert len(response.headers["x-request-id"]) == 32


async def test_unhandled_bug_is_500_envelope_with_request_id():
    app = create_app(FacadeSettings(core_address="127.0.0.1:1"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("bug")

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://facade") as client:
        response = await client.get("/boom", headers={"x-request-id": "bug-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "bug-1"
    assert response.json()["error"]["code"] == "internal_error"


async def test_no_core_channel_before_startup_is_503():
    app = create_app(FacadeSettings(core_address="127.0.0.1:1"))
    transport = httpx.ASGITransport(app=app)  # lifespan not run: no channel yet
    async with httpx.AsyncClient(transport=transport, base_url="http://facade") as client:
        response = await client.post("/v1/chat/completions", json={"messages": USER})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("TANDEM_CORE_ADDRESS", "dns:///tandem-core:50051")
    monkeypatch.setenv("TANDEM_API_KEYS", "k1, k2")
    monkeypatch.setenv("TANDEM_REQUEST_TIMEOUT_S", "30")
    settings = FacadeSettings()
    assert settings.core_address == "dns:///tandem-core:50051"
    assert settings.api_keys == ["k1", "k2"]
    assert settings.request_timeout_s == 30
    monkeypatch.setenv("TANDEM_API_KEYS", '["a"]')
    assert FacadeSettings().api_keys == ["a"]
