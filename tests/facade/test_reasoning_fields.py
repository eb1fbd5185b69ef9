"""Chat's reasoning fields over real HTTP against the fake core's "reasoner" model (the core's
parsing itself: tests/core/service/test_reasoning.py): the core's reasoning deltas come out as
`reasoning_content` and `reasoning` (stream and non-stream alike), usage reports the reasoning
tokens, an assistant turn's reasoning and `thinking_token_budget` reach the core, and a model
without reasoning gets neither field."""

from __future__ import annotations

import json

import httpx
import pytest

USER = [{"role": "user", "content": "alpha beta gamma delta epsilon zeta"}]


@pytest.fixture(scope="module")
def client(facade_url: str):
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        yield client


def test_stream_equals_non_stream(client):
    body = {"model": "reasoner", "messages": USER}
    whole = client.post("/v1/chat/completions", json=body).json()
    message = whole["choices"][0]["message"]
    assert message["reasoning_content"] == message["reasoning"] != ""
    assert message["content"] and message["content"] not in message["reasoning"]
    details = whole["usage"]["completion_tokens_details"]
    assert 0 < details["reasoning_tokens"] < whole["usage"]["completion_tokens"]

    response = client.post("/v1/chat/completions", json={
        **body, "stream": True, "stream_options": {"include_usage": True}})
    reasoning = content = ""
    usage = None
    for line in response.text.splitlines():
        if not line.startswith("data: {"):
            continue
        chunk = json.loads(line[len("data: "):])
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            assert delta.get("reasoning_content") == delta.get("reasoning")
            assert not (delta.get("reasoning") and delta.get("content"))
            reasoning += delta.get("reasoning") or ""
            content += delta.get("content") or ""
    assert (reasoning, content) == (message["reasoning"], message["content"])
    assert usage == whole["usage"]


def test_history_and_budget_reach_the_core(client, fake_core):
    messages = [*USER, {"role": "assistant", "content": "hi", "reasoning": "why not"},
                {"role": "assistant", "content": "ok", "reasoning_content": "because"},
                {"role": "user", "content": "again"}]
    response = client.post("/v1/chat/completions", json={
        "model": "reasoner", "messages": messages, "thinking_token_budget": 7})
    assert response.status_code == 200
    _, request = fake_core.last_request()
    assert [m.reasoning_content for m in request.chat.messages] == ["", "why not", "because", ""]
    assert request.chat.thinking_token_budget == 7
    bad = client.post("/v1/chat/completions", json={
        "model": "reasoner", "messages": USER, "thinking_token_budget": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "thinking_token_budget"


def test_other_models_have_no_reasoning_fields(client):
    whole = client.post("/v1/chat/completions", json={"messages": USER}).json()
    assert "reasoning_content" not in whole["choices"][0]["message"]
    assert "reasoning" not in whole["choices"][0]["message"]
    assert "completion_tokens_details" not in whole["usage"]
