"""Tool calling through `tandem serve` (the session's `server` fixture, a tiny Llama whose
template writes Hermes `<tool_call>` markup) with the clients people use, unchanged: the openai
SDK (streaming and not), LangChain `bind_tools(..., tool_choice=name)`, Instructor's default
TOOLS mode (a pydantic model whose objects are left open: the core closes them) and an OpenAI
Agents SDK agent with one function tool and an `output_type`. Schemas are bounded (enums,
booleans) so that random weights finish within max_tokens."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict

from tests.conftest import MODEL

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Lyon"]},
    "celsius": {"type": "boolean"}}, "required": ["city", "celsius"],
    "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                           "parameters": WEATHER}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


class Weather(BaseModel):
    """The weather of one city."""

    model_config = ConfigDict(extra="forbid")
    city: Literal["Paris", "Lyon"]
    celsius: bool


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


def test_sdk_named_and_required_calls_streamed_and_not(client):
    for tool_choice in (NAMED, "required"):
        done = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                              tool_choice=tool_choice, temperature=0,
                                              max_tokens=80, parallel_tool_calls=False)
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.id.startswith("call_") and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
        stream = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                                tool_choice=tool_choice, temperature=0,
                                                max_tokens=80, parallel_tool_calls=False,
                                                stream=True)
        deltas, finish = [], None
        for chunk in stream:
            for streamed in chunk.choices:
                deltas += streamed.delta.tool_calls or []
                assert not streamed.delta.content
                finish = streamed.finish_reason or finish
        assert finish == "tool_calls"
        first, rest = deltas[0], deltas[1:]
        assert (first.index, first.type, first.function.name) == (0, "function", "get_weather")
        assert first.id.startswith("call_")
        assert all(d.id is None and d.function.name is None and d.index == 0 for d in rest)
        joined = "".join(d.function.arguments or "" for d in deltas)
        assert joined == call.function.arguments  # greedy: the same call, in pieces


def test_a_forced_call_cut_before_its_arguments_is_no_content(client):
    """max_tokens cuts a named call inside its markup (3 tokens: before the arguments): no
    `<tool_call>` text in content, streamed or not, and finish_reason "length"."""
    common = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": NAMED,
              "temperature": 0, "max_tokens": 3}
    done = client.chat.completions.create(**common)
    assert done.choices[0].finish_reason == "length"
    assert not done.choices[0].message.content, done.choices[0].message
    streamed, finish = "", None
    for chunk in client.chat.completions.create(**common, stream=True):
        for choice in chunk.choices:
            streamed += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert (streamed, finish) == ("", "length")


def test_validation_errors_name_the_parameter(server):
    cases = [({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
              "tool_choice"),
             ({"tools": [], "tool_choice": "auto"}, "tools"),
             ({"tool_choice": "required"}, "tool_choice")]
    for extra, param in cases:
        response = httpx.post(f"{server.base}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": ASK, "max_tokens": 4, **extra})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_langchain_bind_tools_with_a_named_tool_choice(server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{server.base}/v1", api_key="unused",
                     temperature=0, max_tokens=80, max_retries=0)
    message = llm.bind_tools([Weather], tool_choice="Weather").invoke(
        "What is the weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "Weather" and call["id"].startswith("call_")
    Weather.model_validate(call["args"])


class OpenWeather(BaseModel):
    """As pydantic models usually are: its JSON Schema leaves additionalProperties unset."""

    city: Literal["Paris", "Lyon"]
    celsius: bool


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1, "seed": 7}])
def test_instructor_default_tools_mode(client, sampling):
    """Mode.TOOLS sends the model's schema as a named tool's parameters, additionalProperties
    unset: the core closes the object, so the call ends after its last key whatever the
    random weights would write next (no IncompleteOutputException)."""
    import instructor

    assert "additionalProperties" not in OpenWeather.model_json_schema()
    patched = instructor.from_openai(client)  # Mode.TOOLS: a named tool_choice
    weather = patched.chat.completions.create(model=MODEL, response_model=OpenWeather,
                                              messages=ASK, max_tokens=80, max_retries=0,
                                              **sampling)
    assert isinstance(weather, OpenWeather)


def test_agents_sdk_agent_with_a_function_tool_and_an_output_type(server):
    """Every turn of an agent with tools and an `output_type` sends both `tools` and
    `response_format`: the first turn must call the tool ("required": the call grammar), the
    later ones are "auto" (the SDK resets tool_choice), where the model may call it again or
    answer in the output type's schema. The tool turns itself off after two calls, so that the
    run ends whichever the random weights pick."""
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    asked: list[str] = []
    sent: list[dict] = []

    @function_tool(is_enabled=lambda context, agent: len(asked) < 2)
    def get_weather(city: Literal["Paris", "Lyon"]) -> str:
        """The weather of a city."""
        asked.append(city)
        return "sunny, 21 C"

    async def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    model = OpenAIChatCompletionsModel(model=MODEL, openai_client=openai.AsyncOpenAI(
        base_url=f"{server.base}/v1", api_key="unused", max_retries=0,
        http_client=httpx.AsyncClient(event_hooks={"request": [record]})))
    agent = Agent(name="weather", instructions="Answer with the weather.", model=model,
                  tools=[get_weather], output_type=Weather,
                  model_settings=ModelSettings(tool_choice="required", temperature=0,
                                               max_tokens=80, parallel_tool_calls=False))
    result = Runner.run_sync(agent, "What is the weather in Paris?", max_turns=4)
    assert asked and asked[0] in ("Paris", "Lyon")
    assert isinstance(result.final_output, Weather)
    assert sent[0]["tool_choice"] == "required" and "response_format" in sent[0]
    # a turn under "auto" offered both, and got an answer (a call, or the final output)
    auto = [body for body in sent[1:] if body.get("tools") and "tool_choice" not in body]
    assert auto and auto[0]["response_format"]["type"] == "json_schema"
