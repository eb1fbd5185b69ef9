"""Responses input as coding agents replay it, over real HTTP with the fake core: items without
`id` / `status` and reasoning items are accepted; spec item and tool types Tandem does not do
are a 400 `unsupported_parameter` naming the exact place."""

from __future__ import annotations

import httpx
import pytest

REPLAYED = [
    {"role": "user", "content": "one two three"},
    {"type": "reasoning", "summary": []},
    {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "x"}]},
]


def test_replayed_items_without_ids_are_accepted(facade_url):
    reply = httpx.post(f"{facade_url}/v1/responses", timeout=30,
                       json={"model": "echo", "input": REPLAYED})
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "completed"


@pytest.mark.parametrize(("extra", "param"), [
    ({"input": [*REPLAYED, {"type": "web_search_call", "id": "ws_1"}]}, "input[5].type"),
    ({"input": REPLAYED, "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": REPLAYED, "background": True}, "background"),
])
def test_spec_features_tandem_does_not_do_are_unsupported(facade_url, extra, param):
    reply = httpx.post(f"{facade_url}/v1/responses", timeout=30, json={"model": "echo", **extra})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == param
