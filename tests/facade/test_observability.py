"""Facade observability over real HTTP: Prometheus /metrics, JSON logs with request ids, auth of
/metrics, and API keys from a file (the fake core stands in for the model core)."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from facade.app import create_app
from facade.logs import JsonFormatter, make_handler, request_id_var
from facade.settings import FacadeSettings, read_api_keys_file
from tests.facade.conftest import start_facade, stop_facade

USER = [{"role": "user", "content": "one two three"}]
KEY_FILE_TEXT = "# production keys\n\nkey-one\n  key-two  \n# key-retired\n"


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample of a scrape (0 when absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("keys") / "api-keys.txt"
    path.write_text(KEY_FILE_TEXT)
    return str(path)


@pytest.fixture(scope="module")
def keyed_url(background, core_double, key_file) -> Iterator[str]:
    """A facade whose keys come from a file; /metrics left open (the default)."""
    settings = FacadeSettings(
        core_address=f"127.0.0.1:{core_double[2]}", request_timeout_s=30, api_keys_file=key_file
    )
    facade = background.run(start_facade(settings))
    yield facade.base_url
    background.run(stop_facade(facade))


@pytest.fixture(scope="module")
def client(facade_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        yield client


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """JSON log lines of the whole process (the facade's background thread included)."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --- API keys -------------------------------------------------------------------------------


def test_key_file_skips_blanks_and_comments(key_file):
    assert read_api_keys_file(key_file) == ["key-one", "key-two"]


def test_key_file_keys_are_accepted_and_others_get_401(keyed_url):
    with httpx.Client(base_url=keyed_url, timeout=10) as client:
        for key in ("key-one", "key-two"):
            response = client.post(
                "/v1/completions", json={"prompt": "a b"},
                headers={"Authorization": f"Bearer {key}"},
            )  # fmt: skip
            assert response.status_code == 200, response.text
        for headers in ({"Authorization": "Bearer key-retired"}, {}):
            response = client.post("/v1/completions", json={"prompt": "a b"}, headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code != 401
        assert client.get("/metrics").status_code == 200  # open unless asked otherwise
        assert sample(client.get("/metrics").text, "tandem_facade_errors_total",
                      code="invalid_api_key") == 2  # fmt: skip


def test_empty_key_file_refuses_to_start(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="no keys"):
        create_app(FacadeSettings(core_address="127.0.0.1:1", api_keys_file=path))


async def test_metrics_can_require_the_api_key():
    settings = FacadeSettings(core_address="127.0.0.1:1", api_keys=["k1"],
                              metrics_require_auth=True)  # fmt: skip
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://facade") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        allowed = await client.get("/metrics", headers={"Authorization": "Bearer k1"})
        assert allowed.status_code == 200
        assert "tandem_facade_requests_total" in allowed.text
        assert (await client.get("/health")).status_code == 200


def test_metrics_auth_without_keys_is_a_configuration_error():
    with pytest.raises(ValueError, match="no API keys"):
        create_app(FacadeSettings(core_address="127.0.0.1:1", metrics_require_auth=True))


def test_new_settings_from_environment(monkeypatch, key_file):
    monkeypatch.setenv("TANDEM_API_KEYS", "env-key")
    monkeypatch.setenv("TANDEM_API_KEYS_FILE", key_file)
    monkeypatch.setenv("TANDEM_METRICS_REQUIRE_AUTH", "true")
    monkeypatch.setenv("TANDEM_CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("TANDEM_LOG_FORMAT", "text")
    settings = FacadeSettings()
    assert settings.accepted_api_keys() == ("env-key", "key-one", "key-two")
    assert settings.metrics_require_auth and settings.log_format == "text"
    assert settings.cors_allow_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("TANDEM_CORS_ALLOW_ORIGINS", '["https://c.example"]')
    assert FacadeSettings().cors_allow_origins == ["https://c.example"]
    monkeypatch.setenv("TANDEM_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        FacadeSettings()


def test_cli_passes_the_key_file(key_file, monkeypatch):
    """`tandem facade --api-key-file F` becomes `python -m facade ... --api-key-file F`, whose
    settings accept the file's keys."""
    from core import cli
    from facade import main

    seen = {}
    monkeypatch.setattr(main, "run", lambda settings, **_: seen.update(settings=settings))
    args = cli.build_parser().parse_args(["facade", "--api-key-file", key_file])
    argv, _ = cli.facade_command(args, args.core)
    assert argv[1:3] == ["-m", "facade"]
    main.main(argv[3:])
    assert seen["settings"].accepted_api_keys() == ("key-one", "key-two")
    assert seen["settings"].core_address == args.core


# --- CORS -----------------------------------------------------------------------------------


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
    }


async def test_cors_allows_listed_origins_only():
    settings = FacadeSettings(core_address="127.0.0.1:1",
                              cors_allow_origins=["https://app.example"])  # fmt: skip
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://facade") as client:
        allowed = await client.options(
            "/v1/chat/completions", headers=preflight("https://app.example")
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "POST" in allowed.headers["access-control-allow-methods"]
        refused = await client.options(
            "/v1/chat/completions", headers=preflight("https://evil.example")
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        simple = await client.get("/health", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        assert simple.headers["x-request-id"]


async def test_cors_is_off_by_default():
    transport = httpx.ASGITransport(app=create_app(FacadeSettings(core_address="127.0.0.1:1")))
    async with httpx.AsyncClient(transport=transport, base_url="http://facade") as client:
        response = await client.options(
            "/v1/chat/completions", headers=preflight("https://app.example")
        )
        assert response.status_code == 405
        assert "access-control-allow-origin" not in response.headers


# --- logs -----------------------------------------------------------------------------------


def test_access_line_is_json_with_the_request_id(client, log_lines):
    response = client.post(
        "/v1/chat/completions", json={"messages": USER}, headers={"x-request-id": "log-me-1"}
    )
    assert response.status_code == 200
    lines = [line for line in parsed(log_lines) if line.get("request_id") == "log-me-1"]
    access = [line for line in lines if line["logger"] == "facade.access"]
    assert len(access) == 1, lines
    assert access[0]["level"] == "INFO" and access[0]["ts"].endswith("+00:00")
    assert access[0]["message"] == "POST /v1/chat/completions 200"
    assert (access[0]["method"], access[0]["path"], access[0]["status"]) == (
        "POST", "/v1/chat/completions", 200,
    )  # fmt: skip
    assert access[0]["route"] == "/v1/chat/completions"
    assert access[0]["duration_ms"] > 0


async def test_every_line_during_a_request_carries_its_id(log_lines):
    """Lines from the handler and from inside a streamed body, not just the access line."""
    from starlette.responses import StreamingResponse

    app = create_app(FacadeSettings(core_address="127.0.0.1:1"))
    inside = logging.getLogger("tests.inside")

    @app.get("/talk")
    async def talk() -> StreamingResponse:
        inside.warning("in the handler")

        async def body():
            inside.warning("in the stream", extra={"chunk_count": 1})
            yield b"x"

        return StreamingResponse(body())

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://facade") as client:
        await client.get("/talk", headers={"x-request-id": "talk-1"})
        await client.get("/talk")  # a generated id
    lines = [line for line in parsed(log_lines) if line["logger"] in ("tests.inside",
                                                                      "facade.access")]  # fmt: skip
    assert len(lines) == 6
    assert all(line.get("request_id") for line in lines), lines
    assert [line["request_id"] for line in lines[:3]] == ["talk-1"] * 3
    assert lines[1]["chunk_count"] == 1
    assert lines[3]["request_id"] != "talk-1"
    assert request_id_var.get() is None  # reset after the request


def test_json_formatter_outside_a_request_and_with_an_exception():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed here" and line["level"] == "ERROR"
    assert "request_id" not in line
    assert "RuntimeError: boom" in line["exception"]


def test_text_format_has_the_request_id():
    stream = io.StringIO()
    logger = logging.getLogger("tests.text")
    handler = make_handler("text", stream)
    logger.addHandler(handler)
    token = request_id_var.set("text-1")
    try:
        logger.warning("hello")
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    assert "[text-1] hello" in stream.getvalue()


# --- metrics --------------------------------------------------------------------------------


def test_json_sse_and_error_requests_move_the_metrics(client):
    route = "/v1/chat/completions"
    before = client.get("/metrics").text
    assert client.post(route, json={"messages": USER}).status_code == 200
    streamed = client.post(route, json={"messages": USER, "stream": True})
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert client.post(route, json={"model": "overloaded", "messages": USER}).status_code == 429
    assert client.post(route, json={"model": "too-long", "messages": USER}).status_code == 400
    midstream = client.post(route, json={"model": "midstream", "messages": USER, "stream": True})
    assert '"error"' in midstream.text
    assert client.get("/v1/no/such/path/1234").status_code == 404
    after = client.get("/metrics").text

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("tandem_facade_requests_total", route=route, method="POST", status="200") == 3
    assert moved("tandem_facade_requests_total", route=route, method="POST", status="429") == 1
    assert moved("tandem_facade_requests_total", route="unmatched", method="GET",
                 status="404") == 1  # fmt: skip
    assert "/v1/no/such/path/1234" not in after
    assert moved("tandem_facade_request_duration_seconds_count", route=route) == 5
    assert moved("tandem_facade_time_to_first_byte_seconds_count", route=route) == 5
    assert moved("tandem_facade_errors_total", code="overloaded") == 1
    assert moved("tandem_facade_errors_total", code="context_length_exceeded") == 1
    assert moved("tandem_facade_errors_total", code="internal_error") == 1  # in-stream error
    assert sample(after, "tandem_facade_streams_in_flight") == 0


def test_stream_in_flight_and_first_byte_before_the_end(client):
    """A slow stream: TTFB is recorded at its first event, the gauge holds until it ends."""
    route = "/v1/chat/completions"
    before = client.get("/metrics").text
    body = {"model": "slow", "messages": USER, "stream": True}
    with client.stream("POST", route, json=body) as response:
        chunks = response.iter_raw()  # keep a reference: a collected iterator disconnects
        assert next(chunks).startswith(b"data: ")  # the first event
        during = client.get("/metrics").text
    assert sample(during, "tandem_facade_streams_in_flight") == 1
    first_bytes = "tandem_facade_time_to_first_byte_seconds_count"
    durations = "tandem_facade_request_duration_seconds_count"
    assert sample(during, first_bytes, route=route) == sample(before, first_bytes, route=route) + 1
    assert sample(during, durations, route=route) == sample(before, durations, route=route)
    deadline = time.monotonic() + 5
    while sample(client.get("/metrics").text, "tandem_facade_streams_in_flight") != 0:
        assert time.monotonic() < deadline, "the stream never left the gauge"
        time.sleep(0.02)
    after = client.get("/metrics").text
    assert sample(after, durations, route=route) == sample(before, durations, route=route) + 1


def test_each_app_has_its_own_registry():
    first = create_app(FacadeSettings(core_address="127.0.0.1:1"))
    second = create_app(FacadeSettings(core_address="127.0.0.1:1"))
    assert first.state.metrics.registry is not second.state.metrics.registry
