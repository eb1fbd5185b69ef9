"""SSE framing over raw HTTP: [DONE], usage chunk, in-stream errors, disconnect → core cancel."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.waiting import wait_until

USER = [{"role": "user", "content": "one two three four"}]


@pytest.fixture(scope="module")
def client(facade_url: str):
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        yield client


def events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == ""  # every event ends with a blank line
    payloads = []
    for block in blocks[:-1]:
        assert block.startswith("data: "), block
        payloads.append(block.removeprefix("data: "))
    return payloads


def test_stream_ends_with_done(client):
    response = client.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)


def test_include_usage_final_chunk(client):
    body = {"messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    chunks = [json.loads(p) for p in events(client.post("/v1/chat/completions", json=body))[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 2},
    }  # fmt: skip
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_continuous_usage_stats(client):
    body = {"prompt": "a b c", "stream": True, "stream_options": {"continuous_usage_stats": True}}
    chunks = [json.loads(p) for p in events(client.post("/v1/completions", json=body))[:-1]]
    assert [chunk["usage"]["completion_tokens"] for chunk in chunks] == [1, 2, 3]


def test_error_mid_stream_becomes_error_event_then_done(client):
    body = {"model": "midstream", "messages": USER, "stream": True}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    payloads = events(response)
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert "engine exploded" in error["message"]


def test_stream_without_finish_reason_ends_with_error(client):
    body = {"model": "unfinished", "messages": USER, "stream": True}
    payloads = events(client.post("/v1/chat/completions", json=body))
    assert payloads[-1] == "[DONE]" and "error" in json.loads(payloads[-2])


def wait_for_cancel(fake_core, request_id: str) -> bool:
    return wait_until(lambda: request_id in fake_core.cancelled_request_ids,
                      f"the fake core seeing {request_id} cancelled")


def test_client_disconnect_cancels_the_core_call(facade_url, fake_core):
    body = {"model": "slow", "messages": USER, "stream": True}
    headers = {"x-request-id": "disconnect-stream"}
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")  # the stream is running
    assert wait_for_cancel(fake_core, "disconnect-stream")


def test_client_disconnect_cancels_non_streaming_call(facade_url, fake_core):
    body = {"model": "slow", "messages": USER}
    headers = {"x-request-id": "disconnect-plain"}
    with httpx.Client(base_url=facade_url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=body, headers=headers)
    assert wait_for_cancel(fake_core, "disconnect-plain")
