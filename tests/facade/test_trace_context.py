"""The W3C trace context with the facade's tracing off (the default): a client's valid
`traceparent` / `tracestate` reach the core unchanged in the Generate call's metadata and the
trace id is on the request's log lines; an invalid one is not forwarded (tracing on is
tests/e2e/test_tracing.py, with real processes)."""

from __future__ import annotations

import io
import json
import logging

import httpx

from tandem.logs import make_handler
from tests.waiting import wait_until

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}


def _generate_metadata(facade_url: str, fake_core, headers: dict[str, str]) -> dict[str, str]:
    reply = httpx.post(f"{facade_url}/v1/chat/completions", json=CHAT, headers=headers,
                       timeout=30)
    assert reply.status_code == 200, reply.text
    request_id = reply.headers["x-request-id"]
    with fake_core._lock:
        return next(metadata for metadata in fake_core.generate_metadata
                    if metadata.get("x-request-id") == request_id)


def test_a_valid_traceparent_is_forwarded_to_the_core_and_logged(facade_url, fake_core):
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root, previous_level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        metadata = _generate_metadata(facade_url, fake_core,
                                      {"traceparent": TRACEPARENT, "tracestate": "vendor=a1"})

        def access_lines() -> list[dict]:
            return [line for line in map(json.loads, stream.getvalue().splitlines())
                    if line["logger"] == "facade.access"
                    and line.get("request_id") == metadata["x-request-id"]]

        # written after the last byte went out: wait for it
        access = wait_until(access_lines, "the request's access line")
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
    assert (metadata.get("traceparent"), metadata.get("tracestate")) == (TRACEPARENT, "vendor=a1")
    assert [line.get("trace_id") for line in access] == [TRACEPARENT.split("-")[1]]


def test_an_invalid_traceparent_is_not(facade_url, fake_core):
    for bad in ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "junk", TRACEPARENT.upper()):
        metadata = _generate_metadata(facade_url, fake_core,
                                      {"traceparent": bad, "tracestate": "vendor=a1"})
        assert "traceparent" not in metadata and "tracestate" not in metadata, bad
    assert "traceparent" not in _generate_metadata(facade_url, fake_core, {})
