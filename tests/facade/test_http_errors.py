"""Error shapes over real HTTP: status, envelope, param, headers, x-request-id on every response."""

from __future__ import annotations

import httpx
import pytest

from facade.settings import FacadeSettings

USER = [{"role": "user", "content": "hello there"}]
ENVELOPE_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def client(facade_url: str):
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        yield client


def assert_envelope(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id")
    error = response.json()["error"]
    assert set(error) == ENVELOPE_KEYS
    return error


def test_bad_temperature_is_400_naming_param(client):
    response = client.post("/v1/chat/completions", json={"messages": USER, "temperature": 2.5})
    error = assert_envelope(response, 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", "temperature")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": USER, "presence_penalty": -3}, "presence_penalty"),
        ({"messages": USER, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_validation_errors_are_400_not_422(client, body, param):
    error = assert_envelope(client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param


def test_completions_validation(client):
    assert (
        assert_envelope(client.post("/v1/completions", json={"prompt": []}), 400)["param"]
        == "prompt"
    )
    error = assert_envelope(
        client.post("/v1/completions", json={"prompt": "x", "n": 3, "best_of": 2}), 400
    )
    assert error["param"] == "best_of"


def test_unknown_fields_are_accepted(client):
    body = {"messages": USER, "use_beam_search": False, "metadata": {"a": "b"}, "top_k": 5}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_malformed_json_is_400(client):
    response = client.post(
        "/v1/chat/completions",
        content=b'{"messages": [',
        headers={"content-type": "application/json"},
    )
    assert assert_envelope(response, 400)["code"] == "invalid_json"


def test_unknown_route_and_method_use_the_envelope(client):
    assert_envelope(client.get("/v1/does-not-exist"), 404)
    assert_envelope(client.put("/v1/chat/completions", json={}), 405)


def test_unknown_model_is_404_model_not_found(client):
    response = client.post("/v1/chat/completions", json={"model": "missing", "messages": USER})
    error = assert_envelope(response, 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def test_overloaded_is_429_with_retry_after(client):
    response = client.post("/v1/chat/completions", json={"model": "overloaded", "messages": USER})
    error = assert_envelope(response, 429)
    assert (error["type"], error["code"]) == ("rate_limit_error", "overloaded")
    assert response.headers["retry-after"] == "8"  # RetryInfo 7.2 s rounded up


def test_overloaded_stream_fails_before_first_byte(client):
    body = {"model": "overloaded", "messages": USER, "stream": True}
    response = client.post("/v1/chat/completions", json=body)
    assert_envelope(response, 429)
    assert not response.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize(
    ("model", "status", "code", "param"),
    [
        ("bad-param", 400, "invalid_value", "top_k"),
        ("too-long", 400, "context_length_exceeded", None),
        ("draining", 503, "service_unavailable", None),
    ],
)
def test_core_errors_map_per_table(client, model, status, code, param):
    response = client.post("/v1/completions", json={"model": model, "prompt": "a b c"})
    error = assert_envelope(response, status)
    assert (error["code"], error["param"]) == (code, param)


def test_core_unreachable_is_503_should_retry(dead_facade_url):
    with httpx.Client(base_url=dead_facade_url, timeout=10) as client:
        response = client.post("/v1/chat/completions", json={"messages": USER})
        error = assert_envelope(response, 503)
        assert (error["type"], error["code"]) == ("server_error", "service_unavailable")
        assert response.headers["x-should-retry"] == "true"
        assert_envelope(client.get("/ready"), 503)
        assert client.get("/health").json() == {"status": "ok"}


def test_incoming_request_id_is_echoed_and_reaches_the_core(client, fake_core):
    response = client.post(
        "/v1/chat/completions", json={"messages": USER}, headers={"x-request-id": "req-abc-123"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-abc-123"
    assert "req-abc-123" in fake_core.request_ids()
    assert response.json()["id"] == "chatcmpl-req-abc-123"
    error_response = client.get("/nowhere", headers={"x-request-id": "req-404"})
    assert error_response.headers["x-request-id"] == "req-404"


def test_generated_request_ids_are_unique(client):
    ids = {client.get("/health").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_ready_follows_core_health(client, fake_health):
    from grpc_health.v1 import health_pb2

    assert client.get("/ready").status_code == 200
    fake_health.status = health_pb2.HealthCheckResponse.NOT_SERVING
    try:
        assert assert_envelope(client.get("/ready"), 503)["code"] == "service_unavailable"
    finally:
        fake_health.status = health_pb2.HealthCheckResponse.SERVING


def test_models_list_and_retrieve(client):
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    demo = listing["data"][0]
    assert {"id", "object", "created", "owned_by"} <= set(demo) and demo["object"] == "model"
    assert demo["is_demo"] is True and demo["description"]
    assert client.get("/v1/models/org/other-model").json()["id"] == "org/other-model"
    assert assert_envelope(client.get("/v1/models/nope"), 404)["code"] == "model_not_found"


@pytest.fixture(scope="module")
def keyed_facade_url(background, core_double):
    from tests.facade.conftest import start_facade, stop_facade

    settings = FacadeSettings(
        core_address=f"127.0.0.1:{core_double[2]}", api_keys=["k-one", "k-two"]
    )
    facade = background.run(start_facade(settings))
    yield facade.base_url
    background.run(stop_facade(facade))


def test_api_keys_are_enforced_per_route(keyed_facade_url):
    import openai

    def sdk(key):
        return openai.OpenAI(base_url=f"{keyed_facade_url}/v1", api_key=key, max_retries=0)

    with pytest.raises(openai.AuthenticationError) as caught:
        sdk("wrong").models.list()
    assert caught.value.response.headers["www-authenticate"] == "Bearer"
    assert caught.value.response.headers["x-request-id"]
    assert caught.value.body["code"] == "invalid_api_key"
    assert [m.id for m in sdk("k-two").models.list().data]
    with httpx.Client(base_url=keyed_facade_url) as client:
        response = client.post("/v1/chat/completions", json={"messages": []})
        assert response.status_code == 401  # before validation: no key, no details
        assert client.get("/health").status_code == 200
