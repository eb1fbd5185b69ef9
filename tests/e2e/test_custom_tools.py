"""Custom tools (OpenAI's free-form `custom` tools) through `tandem serve` (the session's `server`
fixture: the tiny Llama, whose template writes Hermes `<tool_call>` markup), on Responses and on
chat, with the official openai SDK: a forced call's input matches its regex or Lark grammar
(checked by llguidance, which the core constrains with, on the tiny tokenizer), streaming gives
what the non-streaming call gives (greedy), stream items pair with the final ones by id,
replayed custom calls and outputs are accepted, `allowed_tools` can name a custom tool, and a
bad grammar is a 400 naming `tools[0].format`. The grammars are bounded so that random weights
end the input within max tokens."""

from __future__ import annotations

import re

import httpx
import llguidance
import openai
import pytest
from llguidance import LLMatcher

from tests.conftest import MODEL
from tests.responses_stream import check_stream

REGEX = r"(add|sub) [0-9]{1,3}"
LARK = 'start: op " " num\nop: "add" | "sub"\nnum: /[0-9]{1,3}/\n'
ASK = "Add 2 and 3 with the calculator."
CALC = {"type": "custom", "name": "calc", "description": "A calculator.",
        "format": {"type": "grammar", "syntax": "regex", "definition": REGEX}}
CALC_LARK = {**CALC, "format": {"type": "grammar", "syntax": "lark", "definition": LARK}}
NOTE = {"type": "custom", "name": "note", "description": "Free text."}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


def _lark_accepts(tokenizer_json: str, text: str) -> bool:
    tokenizer = llguidance.LLTokenizer(tokenizer_json)
    matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_lark(LARK))
    ids = tokenizer.tokenize_str(text)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


@pytest.mark.parametrize("tool", [CALC, CALC_LARK], ids=["regex", "lark"])
def test_responses_forced_custom_call_matches_its_grammar(client, tiny_models, tool):
    kwargs = dict(model=MODEL, input=ASK, tools=[tool, NOTE], temperature=0,
                  tool_choice={"type": "custom", "name": "calc"}, max_output_tokens=40)
    response = client.responses.create(**kwargs)
    assert response.status == "completed", response
    (call,) = response.output
    assert call.type == "custom_tool_call" and call.name == "calc" and call.call_id
    assert call.id.startswith("ctc_") and call.status == "completed"
    assert re.fullmatch(REGEX, call.input), call.input
    if tool is CALC_LARK:
        assert _lark_accepts(str(tiny_models["llama"] / "tokenizer.json"), call.input)
    with client.responses.stream(**kwargs) as events_stream:
        events = list(events_stream)
        final = events_stream.get_final_response()
    check_stream(events)  # ids and content of the stream's items are the final response's
    types = [event.type for event in events]
    assert "response.custom_tool_call_input.delta" in types
    assert final.output[0].input == call.input  # greedy: the same call, streamed
    # the call and its output replayed without id or status, as coding agents send them
    again = client.responses.create(model=MODEL, max_output_tokens=4, temperature=0,
                                    tools=[tool, NOTE],
                                    input=[{"role": "user", "content": ASK},
                                           {"type": "custom_tool_call", "call_id": call.call_id,
                                            "name": "calc", "input": call.input},
                                           {"type": "custom_tool_call_output",
                                            "call_id": call.call_id, "output": "5"}])
    assert again.status in ("completed", "incomplete")
    assert again.usage.input_tokens > response.usage.input_tokens


def test_chat_custom_tool_streamed_and_not_and_allowed_tools(client):
    tools = [{"type": "custom", "custom": {"name": "calc", "description": "A calculator.",
                                           "format": {"type": "grammar", "grammar": {
                                               "syntax": "regex", "definition": REGEX}}}},
             {"type": "function", "function": {"name": "noop", "parameters": {}}}]
    messages = [{"role": "user", "content": ASK}]
    common = dict(model=MODEL, messages=messages, tools=tools, temperature=0, max_tokens=40,
                  tool_choice={"type": "custom", "custom": {"name": "calc"}})
    done = client.chat.completions.create(**common)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "custom" and call.custom.name == "calc" and call.id.startswith("call_")
    assert re.fullmatch(REGEX, call.custom.input), call.custom.input
    deltas = [delta.model_dump(exclude_none=True)
              for chunk in client.chat.completions.create(**common, stream=True)
              for streamed in chunk.choices for delta in streamed.delta.tool_calls or []]
    assert deltas[0]["type"] == "custom" and deltas[0]["custom"]["name"] == "calc"
    assert "".join(d["custom"].get("input", "") for d in deltas) == call.custom.input
    # allowed_tools naming the custom tool: "required" calls it, the prompt shows both tools
    allowed = client.chat.completions.create(
        **{**common, "tool_choice": {"type": "allowed_tools", "allowed_tools": {
            "mode": "required", "tools": [{"type": "custom", "custom": {"name": "calc"}}]}}},
        parallel_tool_calls=False)
    assert [c.custom.name for c in allowed.choices[0].message.tool_calls] == ["calc"]
    assert allowed.usage.prompt_tokens == done.usage.prompt_tokens
    # the call and the tool's answer as history
    history = [*messages, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "5"}]
    follow = client.chat.completions.create(model=MODEL, messages=history, tools=tools,
                                            max_tokens=4)
    assert follow.usage.prompt_tokens > done.usage.prompt_tokens


@pytest.mark.parametrize("syntax,definition", [("regex", "(["), ("lark", "start: (")])
def test_a_bad_grammar_is_a_400_naming_the_format(server, syntax, definition):
    bodies = {
        "/v1/responses": {"input": ASK, "max_output_tokens": 4, "tools": [{**CALC, "format": {
            "type": "grammar", "syntax": syntax, "definition": definition}}]},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": ASK}], "max_tokens": 4,
                                 "tools": [{
            "type": "custom", "custom": {"name": "calc", "format": {"type": "grammar", "grammar": {
                "syntax": syntax, "definition": definition}}}}]},
    }
    for path, body in bodies.items():
        response = httpx.post(f"{server.base}{path}", timeout=60,
                              json={"model": MODEL, **body})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "tools[0].format", response.text
