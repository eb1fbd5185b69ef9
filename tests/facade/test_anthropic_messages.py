"""POST /v1/messages over real HTTP against the fake core, driven by the `anthropic` SDK and raw
httpx: the message shape, streaming's event sequence (equal to the non-streamed message), the
core's reasoning as thinking blocks (and thinking blocks sent back as the turn's reasoning),
tool_use / tool_result / tool_choice as the core receives them, Anthropic's error envelope and
status codes (the OpenAI routes keep OpenAI's), and x-api-key / anthropic-version. The real
model, tools and count_tokens: tests/e2e/test_anthropic.py."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from facade.settings import FacadeSettings
from tandem.v1 import inference_pb2 as pb

WORDS = "alpha beta gamma delta epsilon zeta"


@pytest.fixture(scope="module")
def client(facade_url: str):
    return anthropic.Anthropic(base_url=facade_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(facade_url: str):
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        yield client


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            assert data["type"] == name
            events.append((name, data))
    return events


def _blocks(content) -> list[dict]:
    """Content blocks as dicts without the SDK's unset extras (citations, parsed_output)."""
    return [{k: v for k, v in block.model_dump().items() if v is not None} for block in content]


def test_create_and_stream_give_the_same_message(client):
    message = client.messages.create(model="echo", max_tokens=64, system="Be terse.",
                                     messages=[{"role": "user", "content": WORDS}])
    assert message.id.startswith("msg_") and message.type == "message"
    assert message.role == "assistant" and message.model == "echo"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == WORDS  # the fake core echoes the last message
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 6 and message.usage.input_tokens > 0

    with client.messages.stream(model="echo", max_tokens=64, system="Be terse.",
                                messages=[{"role": "user", "content": WORDS}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == WORDS
    assert _blocks(final.content) == _blocks(message.content) and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.usage.input_tokens == message.usage.input_tokens


def test_the_event_sequence(http):
    response = http.post("/v1/messages", json={
        "model": "echo", "max_tokens": 3, "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": WORDS}]}]})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response)
    names = [name for name, _ in events]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] > 0 and start["usage"]["output_tokens"] == 0
    assert events[2][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}
    assert "".join(data["delta"]["text"] for name, data in events
                   if name == "content_block_delta") == "alpha beta gamma"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3


def test_reasoning_becomes_thinking_blocks_and_comes_back(client, fake_core):
    message = client.messages.create(model="reasoner", max_tokens=64,
                                     messages=[{"role": "user", "content": WORDS}])
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.thinking == "alpha beta gamma" and thinking.signature == ""
    assert text.text == " delta epsilon zeta"
    with client.messages.stream(model="reasoner", max_tokens=64,
                                messages=[{"role": "user", "content": WORDS}]) as stream:
        kinds = [event.delta.type for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert _blocks(final.content) == _blocks(message.content)
    assert "thinking_delta" in kinds and "text_delta" in kinds

    # the thinking block sent back is the assistant turn's reasoning; the budget reaches the core
    history = [{"role": "user", "content": WORDS},
               {"role": "assistant", "content": _blocks(message.content)},
               {"role": "user", "content": "again"}]
    client.messages.create(model="reasoner", max_tokens=64, messages=history,
                           thinking={"type": "enabled", "budget_tokens": 5})
    _, request = fake_core.last_request()
    assert [m.reasoning_content for m in request.chat.messages] == ["", "alpha beta gamma", ""]
    assert request.chat.messages[1].content[0].text == " delta epsilon zeta"
    assert request.chat.thinking_token_budget == 5

    disabled = client.messages.create(model="reasoner", max_tokens=64, messages=history,
                                      thinking={"type": "disabled"})
    assert [block.type for block in disabled.content] == ["text"]
    _, request = fake_core.last_request()
    assert json.loads(request.chat.chat_template_kwargs_json) == {"enable_thinking": False}


def test_tools_reach_the_core_as_chat_tools(client, fake_core):
    tool = {"name": "get_weather", "description": "Weather.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Lima"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "sunny"}]},
            {"type": "text", "text": "and tomorrow"}]},
    ]
    choices = {"auto": pb.ToolChoice.MODE_AUTO, "any": pb.ToolChoice.MODE_REQUIRED,
               "none": pb.ToolChoice.MODE_NONE}
    for kind, mode in choices.items():
        client.messages.create(model="echo", max_tokens=8, messages=messages, tools=[tool],
                               tool_choice={"type": kind})
        assert fake_core.last_request()[1].chat.tool_choice.mode == mode
    client.messages.create(model="echo", max_tokens=8, messages=messages, tools=[tool],
                           tool_choice={"type": "tool", "name": "get_weather",
                                        "disable_parallel_tool_use": True})
    chat = fake_core.last_request()[1].chat
    assert chat.tool_choice.mode == pb.ToolChoice.MODE_FUNCTION
    assert chat.tool_choice.function_name == "get_weather" and chat.parallel_tool_calls is False
    assert [(t.name, json.loads(t.parameters_json)) for t in chat.tools] == [
        ("get_weather", tool["input_schema"])]
    assert [m.role for m in chat.messages] == ["user", "assistant", "tool", "user"]
    call = chat.messages[1].tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_1", "get_weather", {"city": "Lima"})
    assert chat.messages[2].tool_call_id == "toolu_1"
    assert chat.messages[2].content[0].text == "sunny"


def _anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    return body["error"]["message"]


@pytest.mark.parametrize(("body", "status", "kind", "named"), [
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request_error",
     "max_tokens"),
    ({"max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "hi"}]},
     400, "invalid_request_error", "temperature"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
     400, "invalid_request_error", "document"),
    ({"max_tokens": 5, "tools": [{"type": "web_search_20250305", "name": "web_search"}],
      "messages": [{"role": "user", "content": "hi"}]}, 400, "invalid_request_error",
     "web_search_20250305"),
    ({"model": "missing", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
     404, "not_found_error", "missing"),
    ({"model": "overloaded", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
     529, "overloaded_error", ""),
])
def test_errors_in_anthropics_envelope(http, body, status, kind, named):
    message = _anthropic_error(http.post("/v1/messages", json=body), status, kind)
    assert named in message
    # the same mistake on the OpenAI route keeps OpenAI's envelope
    if status == 404:
        chat = http.post("/v1/chat/completions", json={
            "model": "missing", "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 404 and chat.json()["error"]["code"] == "model_not_found"


def test_sdk_raises_typed_errors(client, facade_url):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="missing", max_tokens=5,
                               messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="echo", max_tokens=5, messages=[])
    bad_version = httpx.post(f"{facade_url}/v1/messages", headers={"anthropic-version": "1999"},
                             json={"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert "anthropic-version" in _anthropic_error(bad_version, 400, "invalid_request_error")


def test_an_error_midstream_is_an_error_event(http):
    response = http.post("/v1/messages", json={
        "model": "midstream", "max_tokens": 10, "stream": True,
        "messages": [{"role": "user", "content": WORDS}]})
    events = _events(response)
    assert events[0][0] == "message_start" and events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]


def _errors_counted(http, code: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'tandem_facade_errors_total{{code="{code}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_errors_are_counted_by_anthropic_type(http):
    before = _errors_counted(http, "api_error"), _errors_counted(http, "overloaded_error")
    http.post("/v1/messages", json={"model": "midstream", "max_tokens": 10, "stream": True,
                                    "messages": [{"role": "user", "content": WORDS}]})
    http.post("/v1/messages", json={"model": "overloaded", "max_tokens": 10,
                                    "messages": [{"role": "user", "content": WORDS}]})
    after = _errors_counted(http, "api_error"), _errors_counted(http, "overloaded_error")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


@pytest.fixture(scope="module")
def keyed_facade_url(background, core_double):
    from tests.facade.conftest import start_facade, stop_facade

    settings = FacadeSettings(core_address=f"127.0.0.1:{core_double[2]}", api_keys=["k-one"],
                              max_body_bytes=4096)
    facade = background.run(start_facade(settings))
    yield facade.base_url
    background.run(stop_facade(facade))


def test_x_api_key_and_bearer_are_both_accepted(keyed_facade_url):
    user = [{"role": "user", "content": "hi there"}]
    good = anthropic.Anthropic(base_url=keyed_facade_url, api_key="k-one", max_retries=0)
    assert good.messages.create(model="echo", max_tokens=5, messages=user).content[0].text
    bearer = anthropic.Anthropic(base_url=keyed_facade_url, auth_token="k-one", max_retries=0)
    assert bearer.messages.create(model="echo", max_tokens=5, messages=user).content[0].text
    wrong = anthropic.Anthropic(base_url=keyed_facade_url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        wrong.messages.create(model="echo", max_tokens=5, messages=user)
    assert caught.value.body["error"]["type"] == "authentication_error"
    # the OpenAI routes keep Bearer only, and their envelope
    chat = httpx.post(f"{keyed_facade_url}/v1/chat/completions", headers={"x-api-key": "k-one"},
                      json={"messages": user})
    assert chat.status_code == 401 and chat.json()["error"]["code"] == "invalid_api_key"


def test_body_limit_and_unknown_paths_in_anthropics_envelope(keyed_facade_url):
    big = {"max_tokens": 5, "messages": [{"role": "user", "content": "x" * 5000}]}
    headers = {"x-api-key": "k-one"}
    with httpx.Client(base_url=keyed_facade_url, headers=headers) as http:
        _anthropic_error(http.post("/v1/messages", json=big), 413, "request_too_large")
        _anthropic_error(http.post("/v1/messages/nope", json={}), 404, "not_found_error")
        chat = http.post("/v1/chat/completions", json={"messages": big["messages"]})
        assert chat.status_code == 413 and chat.json()["error"]["code"] == "request_too_large"
