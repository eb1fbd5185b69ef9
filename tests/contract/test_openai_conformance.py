"""Conformance: every body and stream event that `tandem serve` sends, checked against OpenAI's
published OpenAPI document (the subset pinned in tests/contract/openai/, with its commit), the
way a client generated from that document (Go, Java, .NET, Rust, zod) would read it.

One real server (conftest's `server`: a real core and facade on the tiny model); each case
sends raw HTTP and validates what comes back with a real JSON Schema validator. Where OpenAI's
own servers differ from the document, Tandem follows the servers; those differences are listed
in docs/compatibility.md and allowed here by name (ALLOWED), nowhere else.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import MODEL
from tests.contract.openai_schema import source_commit, violations
from tests.responses_stream import check_stream

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours."}]
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}
COLOUR_SCHEMA = {
    "type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "blue"]}},
    "required": ["colour"], "additionalProperties": False}
CALC_REGEX = r"(add|sub) [0-9]{1,3}"  # a custom tool's input format: bounded, so calls end
CUSTOM_TOOL = {"type": "custom", "custom": {"name": "calc", "format": {
    "type": "grammar", "grammar": {"syntax": "regex", "definition": CALC_REGEX}}}}
SCHEMA_FORMAT = {"type": "json_schema",
                 "json_schema": {"name": "colour", "strict": True, "schema": COLOUR_SCHEMA}}

# OpenAI's servers (and so its SDKs) differ from the document here; docs/compatibility.md lists
# each. (schema, streamed only, path suffix, message fragment) of a violation that is allowed.
ALLOWED: tuple[tuple[str, bool, str, str], ...] = (
    # the first echoed prompt token has no logprob and no top logprobs: nulls in the lists
    ("CreateCompletionResponse", False, "token_logprobs/0", "None is not of type 'number'"),
    ("CreateCompletionResponse", False, "top_logprobs/0", "None is not of type 'object'"),
    # a streamed completion chunk that does not end its choice has finish_reason null
    ("CreateCompletionResponse", True, "finish_reason", "None is not"),
    # encoding_format "base64": the vector is a base64 string, the document says an array
    ("CreateEmbeddingResponse", False, "/embedding", "is not of type 'array'"),
    # a custom tool's streamed call: the document's chunk knows function calls only
    ("CreateChatCompletionStreamResponse", True, "tool_calls/0/type", "'custom' is not one of"),
)


def _check(schema: str, body: dict, streamed: bool = False) -> None:
    found = [v for v in violations(schema, body)
             if not any(s == schema and (streamed or not only_streamed)
                        and v.split(":")[0].endswith(p) and m in v
                        for s, only_streamed, p, m in ALLOWED)]
    assert not found, f"{schema} (openai-openapi {source_commit()[:12]}):\n" + "\n".join(found)


def _post(server, path: str, body: dict) -> dict:
    response = httpx.post(f"{server.base}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def _events(server, path: str, body: dict) -> list[dict]:
    """The JSON payloads of an SSE stream, in order ([DONE] left out)."""
    events = []
    with httpx.stream("POST", f"{server.base}{path}", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: "):]))
    assert events
    return events


CHAT_CASES = {
    "plain": {},
    "n2_logprobs": {"n": 2, "logprobs": True, "top_logprobs": 2, "temperature": 1.0, "seed": 3},
    "tools_required": {"tools": [TOOL], "tool_choice": "required"},
    "tools_auto": {"tools": [TOOL]},
    "json_schema": {"response_format": SCHEMA_FORMAT},
    "json_object": {"response_format": {"type": "json_object"}},
    "stop": {"stop": ["e"], "temperature": 1.0, "seed": 1},
    "custom_tool": {"tools": [CUSTOM_TOOL], "max_tokens": 40,
                    "tool_choice": {"type": "custom", "custom": {"name": "calc"}}},
}


@pytest.mark.parametrize("case", sorted(CHAT_CASES))
def test_chat_completion_bodies_conform(server, case):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 12, "temperature": 0,
            **CHAT_CASES[case]}
    _check("CreateChatCompletionResponse", _post(server, "/v1/chat/completions", body))
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    for event in _events(server, "/v1/chat/completions", stream):
        _check("CreateChatCompletionStreamResponse", event, streamed=True)


COMPLETION_CASES = {
    "plain": {},
    "n2_logprobs": {"n": 2, "logprobs": 2, "temperature": 1.0, "seed": 3},
    "echo_logprobs": {"echo": True, "logprobs": 1},
    "batch": {"prompt": ["one", "two"]},
}


@pytest.mark.parametrize("case", sorted(COMPLETION_CASES))
def test_completion_bodies_conform(server, case):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0,
            **COMPLETION_CASES[case]}
    _check("CreateCompletionResponse", _post(server, "/v1/completions", body))
    if case != "echo_logprobs":  # echo is refused with stream, as OpenAI does
        stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
        for event in _events(server, "/v1/completions", stream):
            # the document has no stream schema of its own: chunks are CreateCompletionResponse
            _check("CreateCompletionResponse", event, streamed=True)


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embedding_bodies_conform(server, encoding):
    body = _post(server, "/v1/embeddings", {"model": EMBEDDING_MODEL, "input": ["a", "b"],
                                            "encoding_format": encoding})
    _check("CreateEmbeddingResponse", body)


def test_model_bodies_conform(server):
    listing = httpx.get(f"{server.base}/v1/models", timeout=30).json()
    _check("ListModelsResponse", listing)
    _check("Model", httpx.get(f"{server.base}/v1/models/{MODEL}", timeout=30).json())


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "temperature": 9}),
    ("/v1/chat/completions", {"model": "no-such-model", "messages": MESSAGES}),
    ("/v1/completions", {"model": MODEL}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "tools": [{"type": "web_search"}]}),
])
def test_error_bodies_conform(server, path, body):
    response = httpx.post(f"{server.base}{path}", json=body, timeout=30)
    assert 400 <= response.status_code < 500
    _check("ErrorResponse", response.json())


RESPONSE_TOOL = {"type": "function", "name": "get_weather", "description": "The weather.",
                 "parameters": TOOL["function"]["parameters"], "strict": True}
RESPONSES_CASES = {
    "plain": {},
    "instructions": {"instructions": "Be terse.", "store": False},
    "tool_required": {"tools": [RESPONSE_TOOL], "tool_choice": "required"},
    "json_schema": {"text": {"format": {"type": "json_schema", "name": "colour", "strict": True,
                                        "schema": COLOUR_SCHEMA}}},
    "truncated": {"max_output_tokens": 16},
    "custom_tool": {"tools": [{"type": "custom", "name": "calc", "format": {
        "type": "grammar", "syntax": "regex", "definition": CALC_REGEX}}],
        "tool_choice": {"type": "custom", "name": "calc"}, "max_output_tokens": 40},
    "custom_replayed": {"input": [
        {"role": "user", "content": "Add 2 and 3."},
        {"type": "custom_tool_call", "call_id": "call_1", "name": "calc", "input": "add 2"},
        {"type": "custom_tool_call_output", "call_id": "call_1", "output": "5"}],
        "tools": [{"type": "custom", "name": "calc"}]},
}


@pytest.mark.parametrize("case", sorted(RESPONSES_CASES))
def test_responses_bodies_conform(server, case):
    body = {"model": MODEL, "input": "Name three colours.", "max_output_tokens": 24,
            "temperature": 0, **RESPONSES_CASES[case]}
    created = _post(server, "/v1/responses", body)
    _check("Response", created)
    if created.get("store", True):
        fetched = httpx.get(f"{server.base}/v1/responses/{created['id']}", timeout=30)
        _check("Response", fetched.json())
        items = httpx.get(f"{server.base}/v1/responses/{created['id']}/input_items", timeout=30)
        _check("ResponseItemList", items.json())
    events = _events(server, "/v1/responses", {**body, "stream": True})
    for event in events:
        _check("ResponseStreamEvent", event, streamed=True)
    check_stream(events)


def test_the_validator_catches_broken_bodies(server):
    good = _post(server, "/v1/chat/completions",
                 {"model": MODEL, "messages": MESSAGES, "max_tokens": 4})
    assert violations("CreateChatCompletionResponse", good) == []
    missing = {key: value for key, value in good.items() if key != "choices"}
    assert any("'choices' is a required property" in v
               for v in violations("CreateChatCompletionResponse", missing))
    wrong_type = json.loads(json.dumps(good))
    wrong_type["choices"][0]["message"]["content"] = 7
    assert any(v.startswith("choices/0/message/content")
               for v in violations("CreateChatCompletionResponse", wrong_type))
    wrong_enum = json.loads(json.dumps(good))
    wrong_enum["choices"][0]["finish_reason"] = "abort"
    assert violations("CreateChatCompletionResponse", wrong_enum)
