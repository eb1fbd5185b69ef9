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


def test_input_items_list_the_stored_input(facade_url):
    from tests.contract.openai_schema import violations

    items = [{**REPLAYED[0], "id": "msg_mine"}, *REPLAYED[1:]]
    created = httpx.post(f"{facade_url}/v1/responses", timeout=30,
                         json={"model": "echo", "input": items}).json()
    url = f"{facade_url}/v1/responses/{created['id']}/input_items"
    listing = httpx.get(url, params={"order": "asc"}, timeout=30).json()
    assert violations("ResponseItemList", listing) == []
    data = listing["data"]
    assert [item["type"] for item in data] == [
        "message", "reasoning", "function_call", "function_call_output", "message"]
    assert data[0]["id"] == "msg_mine" and len({item["id"] for item in data}) == 5
    assert data[0]["content"] == [{"type": "input_text", "text": "one two three"}]
    assert all(item["status"] == "completed" for item in data)
    assert (listing["first_id"], listing["last_id"], listing["has_more"]) == (
        data[0]["id"], data[-1]["id"], False)
    # OpenAI's default order is newest first; limit and after page through it
    newest = httpx.get(url, params={"limit": 2}, timeout=30).json()
    assert [i["id"] for i in newest["data"]] == [i["id"] for i in data[::-1][:2]]
    assert newest["has_more"] is True
    rest = httpx.get(url, params={"after": newest["last_id"]}, timeout=30).json()
    assert [i["id"] for i in rest["data"]] == [i["id"] for i in data[::-1][2:]]
    bad = httpx.get(url, params={"after": "msg_nope"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    assert httpx.get(f"{facade_url}/v1/responses/resp_nope/input_items",
                     timeout=30).status_code == 404


@pytest.mark.parametrize("choice", [None, "auto", "none"])
def test_an_empty_tools_list_is_no_tools(facade_url, fake_core, choice):
    """Codex with every tool off sends `tools: []` (and `tool_choice: "auto"`): OpenAI's
    Responses takes it as no tools, and so does Tandem; "required" without tools stays a 400."""
    body = {"model": "echo", "input": "one two", "tools": [],
            **({"tool_choice": choice} if choice else {})}
    reply = httpx.post(f"{facade_url}/v1/responses", timeout=30, json=body)
    assert reply.status_code == 200, reply.text
    _, request = fake_core.last_request()
    assert not request.chat.tools and not request.chat.HasField("tool_choice")
