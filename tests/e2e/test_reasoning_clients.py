"""End to end: a reasoning model behind `tandem serve`, read by unchanged clients.

A real core and facade serve the tiny Qwen3 (random weights) with a template that opens the think
block, so every answer reasons first (tests/core/service/test_reasoning.py covers the core's
parsing). On chat and Responses, streaming and not: JSON-schema output validates, a forced tool
call's arguments validate against its tool's schema, and the reasoning is present and apart —
never in content or in tool arguments. The openai SDK, LangChain and the Agents SDK read the
content and tool calls as they would from any model; Responses streams carry a `reasoning` item
whose ids and content equal the final response's, every event conforming to OpenAI's document.
`thinking_token_budget` (extra_body) closes the block early: a random model rarely closes it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import core_env, free_port, retry_on_taken_port, stop_process, wait_for_http
from tests.contract.openai_schema import violations
from tests.core.service.test_reasoning import THINKING_MAX_MODEL_LEN, write_thinking_model
from tests.responses_stream import check_stream

MODEL = "tiny-qwen3-thinking"
SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Lyon"]}, "days": {"type": "integer"}},
    "required": ["city", "days"], "additionalProperties": False}
CHAT_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "parameters": SCHEMA}}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "The weather.",
                  "parameters": SCHEMA, "strict": True}
QUESTION = "Weather in Paris for how many days?"
BUDGET = {"thinking_token_budget": 6}


@pytest.fixture(scope="module")
def thinking_server(tiny_models, tmp_path_factory):
    model_dir = write_thinking_model(tiny_models["qwen3"],
                                     tmp_path_factory.mktemp("thinking-serve") / "model")
    log_dir = tmp_path_factory.mktemp("thinking-serve-log")

    def start():
        http_port, grpc_port = free_port(), free_port()
        log_path = log_dir / f"serve-{http_port}.log"
        with open(log_path, "w") as log_file:
            # the engine of test_reasoning's in-process core: its buckets load from the store
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "serve", "--model", str(model_dir),
                 "--served-model-name", MODEL, "--port", str(http_port),
                 "--grpc-port", str(grpc_port), "--max-model-len", str(THINKING_MAX_MODEL_LEN),
                 "--max-num-seqs", "2", "--max-num-batched-tokens", "64",
                 "--embedding-model", "none"],
                stdout=log_file, stderr=subprocess.STDOUT, env=core_env(),
                cwd=Path(__file__).resolve().parents[2])
        base = f"http://127.0.0.1:{http_port}"
        try:
            wait_for_http(f"{base}/ready", process, log_path, timeout_s=480)
        except BaseException:
            stop_process(process)
            raise
        return process, base

    process, base = retry_on_taken_port(start)
    try:
        yield base
    finally:
        stop_process(process, timeout_s=60)


@pytest.fixture
def client(thinking_server):
    return openai.OpenAI(base_url=f"{thinking_server}/v1", api_key="unused", max_retries=0)


def _chat(client, stream: bool, **fields) -> tuple[str, str, dict[int, list[str]], str]:
    """(reasoning, content, {index: [name, arguments]}, finish_reason) of one chat answer."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0, "max_tokens": 200, "extra_body": BUDGET, **fields}
    if not stream:
        choice = client.chat.completions.create(**body).choices[0]
        message = choice.message
        assert message.model_extra["reasoning_content"] == message.model_extra["reasoning"]
        calls = {i: [c.function.name, c.function.arguments]
                 for i, c in enumerate(message.tool_calls or [])}
        return message.model_extra["reasoning"], message.content or "", calls, choice.finish_reason
    reasoning = content = finish = ""
    calls: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(**body, stream=True):
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            assert extra.get("reasoning_content") == extra.get("reasoning")
            reasoning += extra.get("reasoning") or ""
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                parts = calls.setdefault(call.index, ["", ""])
                parts[0] += call.function.name or ""
                parts[1] += call.function.arguments or ""
    return reasoning, content, calls, finish


@pytest.mark.parametrize("stream", [False, True])
def test_chat_json_schema_after_reasoning(client, stream):
    reasoning, content, calls, finish = _chat(client, stream, response_format={
        "type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}})
    assert reasoning and "</think>" not in reasoning and "city" not in reasoning
    jsonschema.validate(json.loads(content), SCHEMA)
    assert not calls and finish == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_chat_forced_tool_call_after_reasoning(client, stream):
    reasoning, content, calls, finish = _chat(
        client, stream, tools=[CHAT_TOOL], parallel_tool_calls=False,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert finish == "tool_calls" and reasoning
    assert "get_weather" not in reasoning and "<tool_call>" not in content + reasoning
    name, arguments = calls[0]
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), SCHEMA)


def _responses_stream(base: str, body: dict) -> tuple[list[dict], dict]:
    events = []
    with httpx.stream("POST", f"{base}/v1/responses", json={**body, "stream": True},
                      timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
    for event in events:
        assert violations("ResponseStreamEvent", event) == [], event
    return events, check_stream(events)


@pytest.mark.parametrize("case", ["json_schema", "forced_tool"])
def test_responses_reasoning_items(thinking_server, case):
    body = {"model": MODEL, "input": QUESTION, "temperature": 0, "max_output_tokens": 200,
            **BUDGET}
    if case == "json_schema":
        body["text"] = {"format": {"type": "json_schema", "name": "w", "schema": SCHEMA,
                                   "strict": True}}
    else:
        body |= {"tools": [RESPONSES_TOOL], "tool_choice": "required",
                 "parallel_tool_calls": False}
    whole = httpx.post(f"{thinking_server}/v1/responses", json=body, timeout=120).json()
    assert violations("Response", whole) == []
    events, final = _responses_stream(thinking_server, body)
    assert final["status"] == whole["status"] == "completed"
    for response in (whole, final):
        kinds = [item["type"] for item in response["output"]]
        assert kinds == ["reasoning", "message" if case == "json_schema" else "function_call"]
        reasoning, answer = response["output"]
        assert reasoning["content"][0]["text"] and reasoning["summary"] == []
        if case == "json_schema":
            jsonschema.validate(json.loads(answer["content"][0]["text"]), SCHEMA)
        else:
            jsonschema.validate(json.loads(answer["arguments"]), SCHEMA)
            assert "get_weather" not in reasoning["content"][0]["text"]
    # stream equals non-stream (greedy), and the stream's items are the final response's
    assert [i["content"] if i["type"] != "function_call" else i["arguments"]
            for i in whole["output"]] == [i["content"] if i["type"] != "function_call"
                                          else i["arguments"] for i in final["output"]]
    done = {e["item"]["id"]: e["item"] for e in events if e["type"] == "response.output_item.done"}
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    assert added == list(done) == [item["id"] for item in final["output"]]
    assert list(done.values()) == final["output"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta")
    assert text == final["output"][0]["content"][0]["text"]
    assert [e["text"] for e in events if e["type"] == "response.reasoning_text.done"] == [text]
    # the reasoning item replayed as input is accepted on the next turn
    replay = {**body, "input": [{"role": "user", "content": QUESTION}, *final["output"],
                                *([{"type": "function_call_output",
                                    "call_id": final["output"][1]["call_id"], "output": "sunny"}]
                                  if case == "forced_tool" else [])],
              "max_output_tokens": 8}
    replay.pop("text", None)
    if "tools" in replay:
        replay["tool_choice"] = "none"
    again = httpx.post(f"{thinking_server}/v1/responses", json=replay, timeout=120)
    assert again.status_code == 200, again.text


def test_langchain_reads_content_and_tool_calls(thinking_server):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{thinking_server}/v1", api_key="unused", model=MODEL,
                      temperature=0, max_tokens=200, max_retries=0, extra_body=BUDGET)
    message = chat.bind_tools([CHAT_TOOL], tool_choice="get_weather").invoke(QUESTION)
    assert message.content == "" and len(message.tool_calls) == 1
    assert message.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(message.tool_calls[0]["args"], SCHEMA)
    answer = chat.bind(response_format={"type": "json_schema", "json_schema": {
        "name": "w", "schema": SCHEMA, "strict": True}}).invoke(QUESTION)
    jsonschema.validate(json.loads(answer.content), SCHEMA)


def test_agents_sdk_runs_a_tool_agent_on_a_reasoning_model(thinking_server):
    from agents import Agent, ModelSettings, RunConfig, Runner, function_tool
    from agents.models.openai_provider import OpenAIProvider

    calls: list[str] = []

    @function_tool
    def get_weather(city: Literal["Paris", "Lyon"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    client = openai.AsyncOpenAI(base_url=f"{thinking_server}/v1", api_key="unused",
                                max_retries=0)
    agent = Agent(name="weather", model=MODEL, tools=[get_weather],
                  tool_use_behavior="stop_on_first_tool",
                  model_settings=ModelSettings(tool_choice="get_weather", max_tokens=200,
                                               temperature=0, extra_body=BUDGET))
    config = RunConfig(model_provider=OpenAIProvider(openai_client=client),
                       tracing_disabled=True)
    result = asyncio.run(Runner.run(agent, QUESTION, run_config=config, max_turns=4))
    assert len(calls) == 1 and result.final_output == f"It is sunny in {calls[0]}."
    assert [item.type for item in result.new_items] == [
        "reasoning_item", "tool_call_item", "tool_call_output_item"]


def test_anthropic_sdk_reads_thinking_blocks(thinking_server):
    """/v1/messages on a reasoning model: the think block is a `thinking` content block before
    the answer (stream equals non-stream), the budget comes from `thinking.budget_tokens`, and
    a forced tool's input validates; a thinking block sent back is accepted."""
    import anthropic

    client = anthropic.Anthropic(base_url=thinking_server, api_key="unused", max_retries=0)
    tool = {"name": "get_weather", "description": "The weather.", "input_schema": SCHEMA}
    body = {"model": MODEL, "max_tokens": 200, "tools": [tool],
            "messages": [{"role": "user", "content": QUESTION}],
            "thinking": {"type": "enabled", "budget_tokens": 6},
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "extra_body": {"temperature": 0}}
    message = client.messages.create(**body)
    with client.messages.stream(**body) as stream:
        streamed = stream.get_final_message()
    for answer in (message, streamed):
        assert [block.type for block in answer.content] == ["thinking", "tool_use"]
        assert answer.content[0].thinking and answer.stop_reason == "tool_use"
        jsonschema.validate(answer.content[1].input, SCHEMA)
        assert "get_weather" not in answer.content[0].thinking
    assert streamed.content[0].thinking == message.content[0].thinking
    assert streamed.content[1].input == message.content[1].input
    again = client.messages.create(model=MODEL, max_tokens=4, extra_body={"temperature": 0},
                                   messages=[{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": [
                                                 b.model_dump(exclude_none=True)
                                                 for b in message.content]},
                                             {"role": "user", "content": [{
                                                 "type": "tool_result", "content": "sunny",
                                                 "tool_use_id": message.content[1].id}]}],
                                   tools=[tool])
    assert again.content and again.stop_reason in ("max_tokens", "end_turn")
