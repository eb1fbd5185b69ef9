"""End to end: the Anthropic Messages API against `tandem serve` (a real core process + a real
uvicorn facade, the tiny model), driven by the official `anthropic` SDK, unchanged: create and
stream give what chat completions gives for the same greedy request, the `messages.stream`
helper, stop reasons (max_tokens, stop_sequence), tools (a forced call's tool_use block, its
input_json_delta stream, the tool_result turn after it), and count_tokens, which counts what
the same message request is billed as input. (SDK 2.10.0's `create` has no `temperature`,
`top_p` or `top_k` arguments any more; they go through `extra_body`.) Claude Code itself:
tests/e2e/test_claude_code.py.
"""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest

from tests.conftest import MODEL

QUESTION = "Say hello in three languages, and then name three colours of the rainbow."
SYSTEM = "You are terse."
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Lima"]},
                       "celsius": {"type": "boolean"}},
        "required": ["city", "celsius"],
        "additionalProperties": False,
    },
}
USER = [{"role": "user", "content": QUESTION}]
GREEDY = {"temperature": 0}  # through extra_body


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.base, api_key="unused", max_retries=0)


def _text(message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_create_and_stream_match_chat_completions(client, server):
    message = client.messages.create(model=MODEL, max_tokens=12, extra_body=GREEDY, system=SYSTEM,
                                     messages=USER)
    chat = openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)
    completion = chat.chat.completions.create(
        model=MODEL, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": SYSTEM}, *USER])
    assert _text(message) == completion.choices[0].message.content
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == completion.usage.prompt_tokens
    assert usage.output_tokens == completion.usage.completion_tokens
    assert message.model == MODEL and message.id.startswith("msg_")
    expected = {"length": "max_tokens", "stop": "end_turn"}[completion.choices[0].finish_reason]
    assert message.stop_reason == expected

    with client.messages.stream(model=MODEL, max_tokens=12, extra_body=GREEDY, system=SYSTEM,
                                messages=USER) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == _text(final) == _text(message)
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == usage.output_tokens


def test_stop_sequences_and_max_tokens(client):
    free = client.messages.create(model=MODEL, max_tokens=20, extra_body=GREEDY, messages=USER)
    assert free.stop_reason == "max_tokens" and free.usage.output_tokens == 20
    text = _text(free)
    stop = text[len(text) // 2:][:2]  # two characters from the middle of the greedy answer
    stopped = client.messages.create(model=MODEL, max_tokens=20, extra_body=GREEDY, messages=USER,
                                     stop_sequences=["\u2603never", stop])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert text.startswith(_text(stopped)) and stop not in _text(stopped)


def test_a_forced_tool_call_and_its_result(client):
    tools = [WEATHER_TOOL]
    question = [{"role": "user", "content": "What is the weather in Lima?"}]
    message = client.messages.create(model=MODEL, max_tokens=200, messages=question, tools=tools,
                                     # one call: a random model may go on calling until max_tokens
                                     tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert calls and calls[0].name == "get_weather"
    jsonschema.validate(calls[0].input, WEATHER_TOOL["input_schema"])

    with client.messages.stream(model=MODEL, max_tokens=200, messages=question, tools=tools,
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        partial = "".join(event.delta.partial_json for event in stream
                          if event.type == "content_block_delta"
                          and event.delta.type == "input_json_delta")
        final = stream.get_final_message()
    streamed = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed[0].name == "get_weather"
    assert json.loads(partial) == streamed[0].input  # one call: its deltas are its input
    jsonschema.validate(streamed[0].input, WEATHER_TOOL["input_schema"])

    answer = client.messages.create(model=MODEL, max_tokens=8, tools=tools, messages=[
        *question,
        {"role": "assistant", "content": [block.model_dump(exclude_none=True)
                                          for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id,
                                      "content": "Sunny, 24 C."}]},
    ], tool_choice={"type": "none"})
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert not [block for block in answer.content if block.type == "tool_use"]


def test_count_tokens_counts_the_billed_prompt(client):
    counts = []
    for extra in ({}, {"tools": [WEATHER_TOOL]}):
        counted = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=USER,
                                               **extra).input_tokens
        message = client.messages.create(model=MODEL, max_tokens=1, system=SYSTEM,
                                         messages=USER, **extra)
        usage = message.usage
        assert counted == usage.input_tokens + usage.cache_read_input_tokens
        counts.append(counted)
    assert counts[1] > counts[0]  # the tools are part of the rendered prompt


def test_errors_reach_the_sdk_typed(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=4, messages=USER)
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=4, system=SYSTEM, messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}}]}])
    assert caught.value.body["type"] == "error"
    # the core's refusal, naming the request's message (not the chat one after the system's)
    message = caught.value.body["error"]["message"]
    assert message.startswith("messages[0]: image blocks are not supported"), message
    with pytest.raises(anthropic.BadRequestError) as caught:  # prompt + max_tokens > context
        client.messages.create(model=MODEL, max_tokens=4000, messages=USER)
    assert "maximum context length" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as caught:  # the tiny Llama does not reason
        client.messages.create(model=MODEL, max_tokens=4, messages=USER,
                               thinking={"type": "enabled", "budget_tokens": 8})
    assert "thinking.budget_tokens" in caught.value.body["error"]["message"]
