"""The request contract over real HTTP: the field policy (honoured / ignored + header / refused),
roles and content parts, the size caps of facade/limits.py, empty inputs, continuous usage."""

from __future__ import annotations

import json

import httpx
import pytest

from facade.app import create_app
from facade.limits import LimitSettings, get_limits
from facade.protocol_policy import IGNORED_PARAMS_HEADER
from facade.settings import FacadeSettings
from tests.facade.conftest import start_facade, stop_facade

USER = [{"role": "user", "content": "one two three"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
TIGHT = LimitSettings(
    max_n=2, max_output_tokens=50, max_stop_strings=2, max_logit_bias_entries=1,
    max_messages=3, max_prompts=2, max_inputs=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def client(facade_url: str):
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def tight(background, core_double):
    """A client of a facade with small caps (LimitSettings overridden through the dependency)."""
    settings = FacadeSettings(core_address=f"127.0.0.1:{core_double[2]}", request_timeout_s=10)
    app = create_app(settings)
    app.dependency_overrides[get_limits] = lambda: TIGHT
    facade = background.run(start_facade(settings, app))
    with httpx.Client(base_url=facade.base_url, timeout=10) as client:
        yield client
    background.run(stop_facade(facade))


def error_of(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


# ---------------------------------------------------------------------------------------------
# Field policy


def test_ignored_fields_are_listed_sorted_in_a_header(client):
    body = {
        "messages": USER, "user": "u1", "store": False, "metadata": {"k": "v"},
        "service_tier": "auto", "prompt_cache_key": "p", "safety_identifier": "s",
        "verbosity": "low", "request_id": "r",
        "spaces_between_special_tokens": True, "modalities": ["text"], "my_vendor_flag": 1,
    }  # fmt: skip
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED_PARAMS_HEADER] == (
        "metadata, modalities, my_vendor_flag, prompt_cache_key, request_id, "
        "safety_identifier, service_tier, spaces_between_special_tokens, store, user, verbosity"
    )


def test_no_header_when_nothing_is_ignored_and_null_is_unset(client):
    response = client.post(CHAT, json={"messages": USER, "user": None, "temperature": 0})
    assert response.status_code == 200
    assert IGNORED_PARAMS_HEADER not in response.headers


def test_ignored_header_on_streams_and_completions(client):
    body = {"messages": USER, "stream": True, "user": "u"}
    with client.stream("POST", CHAT, json=body) as response:
        assert response.headers[IGNORED_PARAMS_HEADER] == "user"
    response = client.post(COMPLETIONS, json={"prompt": "a b", "user": "u", "seed": 1})
    assert response.headers[IGNORED_PARAMS_HEADER] == "user"


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        (CHAT, "audio", {"voice": "alloy", "format": "wav"}),
        (CHAT, "prediction", {"type": "content", "content": "x"}),
        (CHAT, "web_search_options", {}),
        (CHAT, "modalities", ["text", "audio"]),
        (CHAT, "use_beam_search", True),
        (CHAT, "structural_tag", "{}"),
        (CHAT, "guided_whitespace_pattern", " "),
        (CHAT, "truncate_prompt_tokens", 5),
        (COMPLETIONS, "suffix", "}"),
        (COMPLETIONS, "length_penalty", 0.5),
    ],
)
def test_output_changing_fields_are_refused_naming_the_param(client, path, field, value):
    body = {"messages": USER} if path == CHAT else {"prompt": "a b"}
    error = error_of(client.post(path, json={**body, field: value}))
    assert (error["code"], error["param"], error["type"]) == (
        "unsupported_parameter", field, "invalid_request_error"
    )


def test_neutral_values_are_honoured_trivially(client, fake_core):
    body = {
        "messages": USER, "presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1,
        "use_beam_search": False, "length_penalty": 1, "audio": None, "suffix": "",
    }  # fmt: skip
    response = client.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    # neutral values of fields Tandem has no use for are reported, the honoured ones are not
    assert response.headers[IGNORED_PARAMS_HEADER] == "length_penalty, suffix, use_beam_search"
    sampling = fake_core.last_request()[1].sampling
    assert sampling.HasField("repetition_penalty") and sampling.repetition_penalty == 1


def test_vllm_extras_reach_the_core(client, fake_core):
    body = {
        "messages": USER, "top_k": 5, "min_p": 0.1, "min_tokens": 1, "ignore_eos": True,
        "stop_token_ids": [7], "skip_special_tokens": False, "include_stop_str_in_output": True,
        "cache_salt": "t", "add_generation_prompt": True, "chat_template_kwargs": {"x": 1},
    }  # fmt: skip
    response = client.post(CHAT, json=body)
    assert response.status_code == 200 and IGNORED_PARAMS_HEADER not in response.headers
    generate = fake_core.last_request()[1]
    assert (generate.sampling.top_k, round(generate.sampling.min_p, 3)) == (5, 0.1)
    assert generate.stopping.ignore_eos and list(generate.stopping.stop_token_ids) == [7]
    assert generate.stopping.min_tokens == 1 and generate.cache_salt == "t"


def test_priority_reaches_the_core_from_the_body_or_the_header(client, fake_core):
    """vLLM's `priority` on chat and completions becomes GenerateRequest.priority (unset when
    absent); the x-tandem-priority header overrides it; out of range is a 400 naming it."""
    assert client.post(CHAT, json={"messages": USER}).status_code == 200
    assert not fake_core.last_request()[1].HasField("priority")
    assert client.post(CHAT, json={"messages": USER, "priority": -5}).status_code == 200
    assert fake_core.last_request()[1].priority == -5
    response = client.post(COMPLETIONS, json={"prompt": "a", "priority": 3},
                           headers={"x-tandem-priority": "7"})
    assert response.status_code == 200 and IGNORED_PARAMS_HEADER not in response.headers
    assert fake_core.last_request()[1].priority == 7
    assert error_of(client.post(CHAT, json={"messages": USER, "priority": 10**7}))[
        "param"] == "priority"
    assert error_of(client.post(CHAT, json={"messages": USER},
                                headers={"x-tandem-priority": "high"}))[
        "param"] == "x-tandem-priority"


# ---------------------------------------------------------------------------------------------
# Roles and content


def test_every_role_and_parts(client, fake_core):
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "really"}]},
        {"role": "user", "content": "call f", "name": "ann"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "function", "name": "f", "content": "42"},
        {"role": "user", "content": [{"type": "text", "text": "four "},
                                     {"type": "text", "text": "five"}]},
    ]  # fmt: skip
    response = client.post(CHAT, json={"messages": messages})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "four five"
    roles = [message.role for message in fake_core.last_request()[1].chat.messages]
    assert roles == ["system", "system", "user", "assistant", "tool", "tool", "user"]


def test_max_completion_tokens_is_an_alias_and_wins(client, fake_core):
    body = {"messages": USER, "max_tokens": 1, "max_completion_tokens": 2}
    response = client.post(CHAT, json=body)
    assert response.json()["choices"][0]["message"]["content"] == "one two"
    assert fake_core.last_request()[1].stopping.max_tokens == 2


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"messages": []}, "messages"),
        (COMPLETIONS, {"prompt": ""}, "prompt"),
        (COMPLETIONS, {"prompt": []}, "prompt"),
        (COMPLETIONS, {"prompt": [[]]}, "prompt"),
        (COMPLETIONS, {"prompt": ["a", ""]}, "prompt"),
    ],
)
def test_empty_inputs_are_400_naming_the_param(client, path, body, param):
    error = error_of(client.post(path, json=body))
    assert error["param"] is not None and error["param"].startswith(param)


# ---------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (CHAT, {"n": 3}, "n"),
        (CHAT, {"max_tokens": 51}, "max_tokens"),
        (CHAT, {"max_completion_tokens": 51, "max_tokens": 10}, "max_completion_tokens"),
        (CHAT, {"stop": ["a", "b", "c"]}, "stop"),
        (CHAT, {"logit_bias": {"1": 1, "2": 1}}, "logit_bias"),
        (CHAT, {"messages": USER * 4}, "messages"),
        (COMPLETIONS, {"prompt": ["a", "b", "c"]}, "prompt"),
        (COMPLETIONS, {"best_of": 3, "n": 1}, "best_of"),
        (COMPLETIONS, {"max_tokens": 51}, "max_tokens"),
    ],
)
def test_each_limit_is_400_naming_the_param(tight, path, extra, param):
    body = {"messages": USER} if path == CHAT else {"prompt": "a b"}
    error = error_of(tight.post(path, json={**body, **extra}))
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert "at most" in error["message"]


def test_values_at_the_limit_pass(tight):
    body = {"messages": USER * 3, "n": 2, "max_tokens": 50, "stop": ["x", "y"]}
    assert tight.post(CHAT, json=body).status_code == 200
    assert tight.post(COMPLETIONS, json={"prompt": ["a", "b"], "n": 2}).status_code == 200


def test_limit_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("TANDEM_LIMIT_MAX_N", "4")
    monkeypatch.setenv("TANDEM_LIMIT_MAX_OUTPUT_TOKENS", "100")
    limits = LimitSettings()
    assert (limits.max_n, limits.max_output_tokens, limits.max_inputs) == (4, 100, 2048)
    assert LimitSettings.model_fields["max_messages"].default == 2048


# ---------------------------------------------------------------------------------------------
# Streaming usage


def chunks(response: httpx.Response) -> list[dict]:
    payloads = [block.removeprefix("data: ") for block in response.text.split("\n\n") if block]
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def test_continuous_usage_stats_put_usage_on_every_chunk(client):
    body = {
        "messages": USER, "stream": True, "n": 2,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }  # fmt: skip
    events = chunks(client.post(CHAT, json=body))
    assert all(event["usage"] is not None for event in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[0]["usage"]["completion_tokens"] == 0 and events[0]["usage"]["prompt_tokens"] == 3
    finished = {c["index"] for e in events for c in e["choices"] if c["finish_reason"]}
    assert finished == {0, 1}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 6
    del body["messages"]
    completions = chunks(client.post(COMPLETIONS, json={**body, "prompt": "a b", "echo": True}))
    assert all(event["usage"] is not None for event in completions)
