"""Structured outputs end to end: `response_format`, `structured_outputs` and `guided_*` through
the real facade and core (`tandem serve` on a tiny random-weight Llama), outputs checked with
`jsonschema` / `re`, bad constraints refused with a 400 naming the param before any token."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL

# Bounded: a random-weight model must finish it well within MAX_TOKENS.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["name", "ok", "color", "tags"],
    "additionalProperties": False,
}
MAX_TOKENS = 120
MESSAGES = [{"role": "user", "content": "Describe a thing as JSON."}]
JSON_SCHEMA_FORMAT = {"type": "json_schema",
                      "json_schema": {"name": "thing", "schema": SCHEMA, "strict": True}}


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


def _chat(client, stream: bool, **kwargs) -> tuple[str, str]:
    """(text, finish_reason) of one chat completion, streamed or not."""
    if not stream:
        choice = client.chat.completions.create(model=MODEL, messages=MESSAGES, **kwargs) \
            .choices[0]
        return choice.message.content, choice.finish_reason
    chunks = [c for c in client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, **kwargs) if c.choices]
    return ("".join(c.choices[0].delta.content or "" for c in chunks),
            chunks[-1].choices[0].finish_reason)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1, "seed": 1234}],
                         ids=["greedy", "seeded"])
def test_strict_json_schema_validates_streaming_or_not(client, sampling):
    text, finish = _chat(client, False, response_format=JSON_SCHEMA_FORMAT,
                         max_tokens=MAX_TOKENS, **sampling)
    assert finish == "stop"
    jsonschema.validate(json.loads(text), SCHEMA)
    assert _chat(client, True, response_format=JSON_SCHEMA_FORMAT, max_tokens=MAX_TOKENS,
                 **sampling) == (text, "stop")


def test_json_object_is_an_object_on_chat_and_completions(client):
    text, finish = _chat(client, False, response_format={"type": "json_object"},
                         max_tokens=MAX_TOKENS, temperature=1, seed=5)
    # random weights may wander inside an open-ended object: valid JSON when it finishes
    assert finish in ("stop", "length")
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.startswith("{")
    completion = client.completions.create(
        model=MODEL, prompt="JSON:", max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"response_format": {"type": "json_object"}}).choices[0]
    assert completion.text.startswith("{")
    if completion.finish_reason == "stop":
        assert isinstance(json.loads(completion.text), dict)


@pytest.mark.parametrize(("extra", "check"), [
    ({"structured_outputs": {"choice": ["yes", "no", "maybe"]}},
     lambda text: text in ("yes", "no", "maybe")),
    ({"guided_choice": ["left", "right"]}, lambda text: text in ("left", "right")),
    ({"structured_outputs": {"regex": r"[a-c]{2,4}-[0-9]{2}"}},
     lambda text: re.fullmatch(r"[a-c]{2,4}-[0-9]{2}", text)),
    ({"guided_regex": r"(cat|dog)s?"}, lambda text: re.fullmatch(r"(cat|dog)s?", text)),
    ({"guided_json": SCHEMA}, lambda text: jsonschema.validate(json.loads(text), SCHEMA) or 1),
    ({"structured_outputs": {"json": json.dumps(SCHEMA)}},
     lambda text: jsonschema.validate(json.loads(text), SCHEMA) or 1),
    ({"structured_outputs": {"grammar": 'start: "x" ("y" | "z")+ "!"\n'}},  # Lark
     lambda text: re.fullmatch(r"x[yz]+!", text)),
    ({"guided_grammar": 'root ::= "ab" [0-9] ("." [0-9])?'},  # GBNF
     lambda text: re.fullmatch(r"ab[0-9](\.[0-9])?", text)),
], ids=["so-choice", "guided-choice", "so-regex", "guided-regex", "guided-json", "so-json",
        "lark", "gbnf"])
def test_vllm_constraints_on_completions(client, extra, check):
    # stop strings never cut constrained output: '"' and 'y' occur in these outputs
    choice = client.completions.create(
        model=MODEL, prompt="Answer:", max_tokens=MAX_TOKENS, temperature=1, seed=3,
        stop=['"', "y", "-"], extra_body=extra).choices[0]
    assert choice.finish_reason == "stop", choice
    assert check(choice.text), choice.text


def test_max_tokens_inside_the_structure_is_length(client):
    text, finish = _chat(client, False, response_format=JSON_SCHEMA_FORMAT, max_tokens=3,
                         temperature=0)
    assert finish == "length" and text.startswith("{")


def test_n_choices_each_validate(client):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT, n=3,
        max_tokens=MAX_TOKENS, temperature=1, seed=11)
    assert len(response.choices) == 3
    for choice in response.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


@pytest.mark.parametrize(("body", "param"), [
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "strict": True, "schema": {"type": "array", "uniqueItems": True}}}},
     "response_format"),
    ({"guided_regex": "a(b"}, "guided_regex"),
    ({"guided_grammar": "start: undefined_rule"}, "guided_grammar"),
    ({"structured_outputs": {"grammar": "root ::= ("}}, "structured_outputs"),
    ({"guided_json": "{not json"}, "guided_json"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
    ({"guided_json": {"type": "string", "maxLength": 3}, "guided_whitespace_pattern": " "},
     "guided_whitespace_pattern"),
])
def test_bad_constraints_are_a_400_naming_the_param(server, body, param):
    response = httpx.post(f"{server.base}/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": MESSAGES, "max_tokens": 8, "stream": True, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


def test_hostile_regex_is_refused_in_bounded_time_while_another_request_streams(server):
    """A regex whose lexer explodes gets its 400 within the compile bound (5 s) plus slack,
    and a stream running at the same time keeps producing tokens."""
    streamed: list[float] = []  # arrival times of the other request's chunks
    finishes: list[str] = []
    other = threading.Thread(target=_stream_times, args=(server, streamed, finishes))
    other.start()
    deadline = time.monotonic() + 60
    while not streamed and time.monotonic() < deadline:  # the other stream has started
        time.sleep(0.01)
    started = time.monotonic()
    response = httpx.post(f"{server.base}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": "x", "max_tokens": 4,
        "guided_regex": "((a{100}){100}){100}"})
    refused_at = time.monotonic()
    other.join(timeout=180)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "guided_regex"
    assert refused_at - started < 30  # generous: the bound is 5 s, the machine is shared
    assert finishes == ["length"]  # it ran to its end
    assert streamed[-1] > started  # it was still streaming when the hostile one came


OTHER_TOKENS = 200


def _stream_times(server, times: list[float], finishes: list[str]) -> None:
    with httpx.stream("POST", f"{server.base}/v1/completions", timeout=120, json={
            "model": MODEL, "prompt": "stream on", "max_tokens": OTHER_TOKENS, "temperature": 0,
            "stream": True, "ignore_eos": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                times.append(time.monotonic())
                finishes += [choice["finish_reason"] for choice in json.loads(line[6:])["choices"]
                             if choice["finish_reason"]]


def test_constrained_and_free_requests_mixed_compile_nothing(server, client):
    threads = [threading.Thread(target=_chat, args=(client, index % 2 == 0), kwargs=kwargs)
               for index, kwargs in enumerate([
                   {"response_format": JSON_SCHEMA_FORMAT, "max_tokens": 40, "temperature": 1},
                   {"max_tokens": 30, "temperature": 0.7},
                   {"response_format": {"type": "json_object"}, "max_tokens": 20},
                   {"max_tokens": 10, "logprobs": True, "top_logprobs": 2}])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    body = httpx.get(server.metrics_url, timeout=5).text
    assert re.search(r"^tandem:compilations_after_warmup 0\.0$", body, re.M)


def test_grpc_clients_get_structured_outputs_too(server):
    import grpc

    from tandem.v1 import inference_pb2 as pb
    from tandem.v1 import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        request = pb.GenerateRequest(
            text="Pick:", stopping=pb.StoppingCriteria(max_tokens=MAX_TOKENS),
            structured_outputs=pb.StructuredOutputs(regex=r"(red|green) [0-9]{1,3}"))
        chunks = list(stub.Generate(request, timeout=120))
        text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
        assert re.fullmatch(r"(red|green) [0-9]{1,3}", text), text
        assert chunks[-1].choices[-1].finish_reason == pb.FINISH_REASON_STOP
        bad = pb.GenerateRequest(text="x", structured_outputs=pb.StructuredOutputs(regex="a(b"))
        with pytest.raises(grpc.RpcError) as error:
            list(stub.Generate(bad, timeout=60))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "structured_outputs" in error.value.details()
