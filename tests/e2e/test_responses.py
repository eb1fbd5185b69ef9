"""End to end: the Responses API and /tokenize, /detokenize against `tandem serve` (a real core
process + a real uvicorn facade, the tiny model), driven by the official `openai` SDK and the
OpenAI Agents SDK. The store here is the default, in memory; tests/e2e/test_responses_redis.py
covers the Redis store with two facades.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest

from tandem.v1 import inference_pb2 as pb
from tests.conftest import MODEL, SERVER_MAX_MODEL_LEN
from tests.responses_stream import check_stream

# Issue 11 (structured output and tool calling in the core) is what tools and text.format run
# on; the contract carries parsed tool calls once it has landed.
HAS_TOOL_CALLING = "tool_calls" in pb.ChoiceDelta.DESCRIPTOR.fields_by_name
needs_tool_calling = pytest.mark.skipif(
    not HAS_TOOL_CALLING,
    reason="the core has no tool-call parsing / structured output yet (ChoiceDelta.tool_calls "
    "missing from the contract)",
)

INSTRUCTIONS = "You are terse."
QUESTION = "Say hello in three languages, and then name three colours of the rainbow."

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Lima"]},
                       "celsius": {"type": "boolean"}},
        "required": ["city", "celsius"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


def _chat_text(client, messages, **kwargs) -> str:
    completion = client.chat.completions.create(model=MODEL, messages=messages, **kwargs)
    return completion.choices[0].message.content


@pytest.mark.parametrize("instructions", [None, INSTRUCTIONS])
def test_create_matches_chat_completions_with_the_same_seed(client, instructions):
    extra = {"instructions": instructions} if instructions else {}
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=12,
                                       temperature=1.0, extra_body={"seed": 11}, **extra)
    messages = [{"role": "user", "content": QUESTION}]
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12,
                                          temperature=1.0, seed=11)
    assert response.output_text == chat.choices[0].message.content
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL and response.instructions == instructions
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    if chat.choices[0].finish_reason == "length":
        assert response.status == "incomplete"
        assert response.incomplete_details.reason == "max_output_tokens"
    else:
        assert response.status == "completed"


def _completed_kwargs(client) -> dict:
    """A request that ends with a stop string (status completed) on the random-weight model."""
    kwargs = dict(model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0)
    full = client.responses.create(**kwargs, extra_body={"ignore_eos": True}).output_text
    stop = full[5:8]
    assert len(stop) == 3 and full.find(stop) == 5
    return {**kwargs, "extra_body": {"ignore_eos": True, "stop": [stop]}, "expected": full[:5]}


def test_stream_events_arrive_in_the_documented_order(client):
    kwargs = _completed_kwargs(client)
    expected = kwargs.pop("expected")
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert check_stream(events)["id"] == final.id
    types = [event.type for event in events]
    head = ["response.created", "response.in_progress", "response.output_item.added",
            "response.content_part.added"]
    tail = ["response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed"]
    assert types[:4] == head and types[-4:] == tail
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == expected == final.output_text
    assert final.status == "completed" and final.id == events[0].response.id
    assert events[2].item.id == final.output[0].id
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == expected and stored.status == "completed"


def test_stream_of_a_truncated_answer_ends_incomplete(client):
    with client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=4,
                                 extra_body={"ignore_eos": True}, stream=True) as stream:
        events = list(stream)
    check_stream(events)
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.usage.output_tokens == 4


def test_previous_response_id_continues_the_conversation(client, server):
    first_input = "Remember these words: " + ", ".join(f"item{i}" for i in range(24)) + "."
    first = client.responses.create(model=MODEL, input=first_input, max_output_tokens=6,
                                    instructions=INSTRUCTIONS, extra_body={"ignore_eos": True})
    second = client.responses.create(model=MODEL, input="Which was the third word?",
                                     previous_response_id=first.id, max_output_tokens=6,
                                     instructions=INSTRUCTIONS, extra_body={"ignore_eos": True})
    # the earlier input and output come before the new input (instructions are not carried
    # over: each request gives its own, here the same ones)
    messages = [{"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": first_input},
                {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "Which was the third word?"}]
    tokenized = httpx.post(f"{server.base}/tokenize", json={"model": MODEL, "messages": messages})
    assert second.usage.input_tokens == tokenized.json()["count"]
    # the first turn's prompt blocks come from the core's prefix cache
    assert second.usage.input_tokens_details.cached_tokens >= 16
    assert second.previous_response_id == first.id
    assert client.responses.retrieve(first.id).output_text == first.output_text
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="again", previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_unstored_responses_are_not_kept(client):
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_input_items_and_field_policy(server):
    body = {"model": MODEL, "max_output_tokens": 3, "reasoning": {"effort": "low"},
            "truncation": "disabled", "metadata": {"k": "v"},
            "input": [{"role": "developer", "content": "Be brief."},
                      {"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "Call the tool."}]},
                      {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                       "arguments": "{\"city\": \"Paris\"}"},
                      {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}
    reply = httpx.post(f"{server.base}/v1/responses", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-tandem-ignored-params"] == "reasoning"
    assert reply.json()["metadata"] == {"k": "v"}
    refused = httpx.post(f"{server.base}/v1/responses",
                         json={**body, "truncation": "auto"}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "truncation"
    empty = httpx.post(f"{server.base}/v1/responses", json={"model": MODEL, "input": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
    unknown = httpx.get(f"{server.base}/v1/responses/resp_nope")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "response_not_found"


def test_input_tokens_count_what_the_response_reads(client, server):
    """POST /v1/responses/input_tokens counts the prompt the same request renders: the
    instructions, the tools and the previous response's conversation included."""
    first = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=4,
                                    temperature=0)
    body = {"model": MODEL, "instructions": INSTRUCTIONS, "input": "And in Lima?",
            "tools": [WEATHER_TOOL], "previous_response_id": first.id}
    counted = httpx.post(f"{server.base}/v1/responses/input_tokens", json=body, timeout=60)
    assert counted.status_code == 200, counted.text
    assert counted.json()["object"] == "response.input_tokens"
    second = client.responses.create(**body, max_output_tokens=4, temperature=0)
    assert counted.json()["input_tokens"] == second.usage.input_tokens
    bad = httpx.post(f"{server.base}/v1/responses/input_tokens",
                     json={**body, "previous_response_id": "resp_nope"}, timeout=60)
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "previous_response_id"


@needs_tool_calling
@pytest.mark.parametrize("stream", [False, True])
def test_forced_tool_choice_gives_function_calls_whose_arguments_validate(client, stream):
    kwargs = dict(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER_TOOL],
                  tool_choice={"type": "function", "name": "get_weather"},
                  max_output_tokens=200, temperature=0)
    if stream:
        with client.responses.stream(**kwargs) as events_stream:
            events = list(events_stream)
            response = events_stream.get_final_response()
        check_stream(events)
        types = [event.type for event in events]
        assert "response.function_call_arguments.delta" in types
        assert "response.function_call_arguments.done" in types
        fragments = "".join(e.delta for e in events
                            if e.type == "response.function_call_arguments.delta")
        assert fragments == response.output[-1].arguments
    else:
        response = client.responses.create(**kwargs)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and response.status == "completed"
    for call in calls:
        assert call.name == "get_weather" and call.call_id
        jsonschema.validate(json.loads(call.arguments), WEATHER_TOOL["parameters"])


TIME_TOOL = {"type": "function", "name": "get_time", "description": "The time in a city.",
             "parameters": {"type": "object", "properties": {"city": {"type": "string",
                                                                       "enum": ["Paris", "Lima"]}},
                            "required": ["city"], "additionalProperties": False},
             "strict": True}


@needs_tool_calling
@pytest.mark.parametrize("mode", ["required", "auto"])
def test_allowed_tools_limit_the_calls_not_the_prompt(client, server, mode):
    """tool_choice allowed_tools: the model calls only the allowed tools, while the prompt
    still shows every tool (the same input tokens as with every tool callable); on chat too."""
    allowed = {"type": "allowed_tools", "mode": mode,
               "tools": [{"type": "function", "name": "get_time"}]}
    body = {"model": MODEL, "input": "What is the weather in Paris?",
            "tools": [WEATHER_TOOL, TIME_TOOL], "max_output_tokens": 120, "temperature": 0,
            "parallel_tool_calls": False}  # one call: a random model may go on calling
    response = client.responses.create(**body, tool_choice=allowed)
    calls = [item for item in response.output if item.type == "function_call"]
    assert all(call.name == "get_time" for call in calls)
    for call in calls:
        jsonschema.validate(json.loads(call.arguments), TIME_TOOL["parameters"])
    if mode == "required":
        assert calls and response.status == "completed"
    counts = [httpx.post(f"{server.base}/v1/responses/input_tokens", timeout=60,
                         json={**body, "tool_choice": choice}).json()["input_tokens"]
              for choice in (allowed, mode)]
    assert counts[0] == counts[1] == response.usage.input_tokens
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[{"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}
               for tool in (WEATHER_TOOL, TIME_TOOL)],
        tool_choice={"type": "allowed_tools", "allowed_tools": {
            "mode": mode, "tools": [{"type": "function", "function": {"name": "get_time"}}]}},
        parallel_tool_calls=False, max_tokens=120, temperature=0)
    chat_calls = chat.choices[0].message.tool_calls or []
    assert all(call.function.name == "get_time" for call in chat_calls)
    assert chat_calls or mode == "auto"
    unknown = httpx.post(f"{server.base}/v1/responses", timeout=60, json={
        **body, "tool_choice": {**allowed, "tools": [{"type": "function", "name": "nope"}]}})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "tool_choice"


@needs_tool_calling
def test_text_format_json_schema_output_validates(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "mood": {"type": "string", "enum": ["a", "b"]}},
              "required": ["ok", "mood"], "additionalProperties": False}
    response = client.responses.create(
        model=MODEL, input="Answer in JSON.", max_output_tokens=200, temperature=1.0,
        extra_body={"seed": 3},
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema,
                         "strict": True}})  # fmt: skip
    assert response.status == "completed"
    jsonschema.validate(json.loads(response.output_text), schema)


@needs_tool_calling
def test_agents_sdk_default_model_runs_an_agent_with_a_function_tool(server):
    from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider

    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Lima"]) -> str:  # bounded: the model is random
        """The weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    client = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)
    # The model is random: its call is forced, and the run ends with the tool's result (the SDK
    # raises on an `incomplete` response, which free text past max_tokens would be).
    agent = Agent(name="weather", model=MODEL, instructions=INSTRUCTIONS, tools=[get_weather],
                  tool_use_behavior="stop_on_first_tool",
                  model_settings=ModelSettings(tool_choice="get_weather", max_tokens=200,
                                               temperature=0))  # fmt: skip
    # the provider's default model type: the Responses API
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client),
                       tracing_disabled=True)  # fmt: skip
    result = asyncio.run(Runner.run(agent, "Weather in Paris?", run_config=config,
                                    max_turns=4))  # fmt: skip
    assert len(calls) == 1, "the agent should call its tool once"
    assert result.final_output == f"It is sunny in {calls[0]}."
    assert [item.type for item in result.new_items] == ["tool_call_item", "tool_call_output_item"]


def test_tokenize_and_detokenize_round_trip_text(server):
    text = "Hello tokenizer, round trip!"
    tokens = httpx.post(f"{server.base}/tokenize", json={"prompt": text, "model": MODEL}).json()
    assert tokens["count"] == len(tokens["tokens"]) == server.count_tokens(text=text)
    assert tokens["max_model_len"] == SERVER_MAX_MODEL_LEN and tokens["token_strs"] is None
    back = httpx.post(f"{server.base}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back == {"prompt": text}
    plain = httpx.post(f"{server.base}/tokenize",
                       json={"prompt": text, "add_special_tokens": False,
                             "return_token_strs": True}).json()  # fmt: skip
    assert plain["count"] <= tokens["count"] and len(plain["token_strs"]) == plain["count"]


def test_tokenize_chat_messages_round_trip(client, server):
    messages = [{"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": "What is two plus two?"}]
    tokens = httpx.post(f"{server.base}/tokenize", json={"messages": messages}).json()
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    assert tokens["count"] == chat.usage.prompt_tokens  # the template the core applies
    prompt = httpx.post(f"{server.base}/detokenize", json={"tokens": tokens["tokens"]}).json()
    for message in messages:
        assert message["content"] in prompt["prompt"]
    both = httpx.post(f"{server.base}/tokenize", json={"prompt": "x", "messages": messages})
    assert both.status_code == 400
    bad = httpx.post(f"{server.base}/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
