"""Tool calls through the real core over gRPC, on a tiny model of each family (Hermes/Qwen2.5,
Llama 3.1 JSON, Mistral) and on one whose template ignores tools: forced calls ("required", a
named function, parallel_tool_calls false) come back as structured deltas whose arguments
validate against the tool's schema, and bad tool requests are 400s naming their parameter."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import jsonschema
import pytest

from core.config import ServerConfig
from core.models.tiny import write_tiny_model
from core.service.server import CoreServer
from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import family_engine_config
from tests.core.service.test_core_grpc import error_info

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit", "days"], "additionalProperties": False}
ALARM = {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"],
         "additionalProperties": False}
SCHEMAS = {"get_weather": WEATHER, "set_alarm": ALARM}
TOOLS = [pb.Tool(type="function", name=name, description=f"{name} tool",
                 parameters_json=json.dumps(schema)) for name, schema in SCHEMAS.items()]
MODE = pb.ToolChoice.Mode


@pytest.fixture(scope="module", params=["qwen2", "llama3", "mistral", "none"])
async def family(request, tmp_path_factory):
    """(variant, stub) of a core serving a tiny model of one family ("none": a Llama whose
    template ignores tools). conftest's `family_engine_config`: the cores reuse the buckets
    engines of the same model shapes compiled earlier in the session (the Llama's: the `server`
    fixture's core, from its store; the others': test_structured's `family`, through XLA's
    persistent cache) instead of compiling their own."""
    variant = request.param
    root = tmp_path_factory.mktemp(f"tools-{variant}")
    model_dir = (write_tiny_model(root, "llama", tool_style="none") if variant == "none"
                 else write_tiny_model(root, variant))
    config = ServerConfig(model_dir=Path(model_dir), model_name=f"tiny-{variant}", grpc_port=0,
                          engine=family_engine_config("llama" if variant == "none" else variant))
    server = CoreServer(config)
    port = await server.start()
    await server.load()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield variant, pb_grpc.InferenceStub(channel)
    await channel.close()
    await server.drain_and_stop()


def generate(choice: pb.ToolChoice | None, *, tools=TOOLS, parallel: bool | None = None,
             seed: int | None = None, n: int = 1) -> pb.GenerateRequest:
    chat = pb.ChatInput(messages=[pb.ChatMessage(role="user", content=[pb.ContentPart(
        text="What is the weather in Paris?")])], tools=tools)
    if choice is not None:
        chat.tool_choice.CopyFrom(choice)
    if parallel is not None:
        chat.parallel_tool_calls = parallel
    request = pb.GenerateRequest(chat=chat, n=n, stopping=pb.StoppingCriteria(max_tokens=120))
    if seed is None:
        request.sampling.temperature = 0.0
    else:
        request.sampling.temperature, request.sampling.seed = 1.0, seed
    return request


async def calls_of(stub, request: pb.GenerateRequest) -> dict[int, dict]:
    """Per choice: its content, finish reason and calls rebuilt from the deltas (checking that
    each call's first delta, and only it, has the id, type and name)."""
    choices: dict[int, dict] = {}
    async for response in stub.Generate(request):
        for delta in response.choices:
            choice = choices.setdefault(delta.index, {"content": "", "calls": {}, "finish": 0})
            choice["content"] += delta.text
            choice["finish"] = delta.finish_reason or choice["finish"]
            for call in delta.tool_calls:
                if call.index not in choice["calls"]:
                    assert call.id.startswith("call_") and call.type == "function"
                    assert call.function.name
                    choice["calls"][call.index] = {"id": call.id, "name": call.function.name,
                                                   "arguments": ""}
                else:
                    assert not call.id and not call.type and not call.function.name
                choice["calls"][call.index]["arguments"] += call.function.arguments
    return choices


def check_calls(choice: dict, names: set[str], at_most: int | None = None) -> None:
    assert choice["finish"] == pb.FINISH_REASON_TOOL_CALLS, choice
    assert choice["content"] == ""
    calls = [choice["calls"][index] for index in sorted(choice["calls"])]
    assert calls and sorted(choice["calls"]) == list(range(len(calls)))
    assert at_most is None or len(calls) <= at_most
    for call in calls:
        assert call["name"] in names
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
    assert len({call["id"] for call in calls}) == len(calls)


async def test_a_named_function_is_called_with_valid_arguments(family):
    variant, stub = family
    if variant == "none":
        pytest.skip("this template cannot show tools")
    choice = pb.ToolChoice(mode=MODE.MODE_FUNCTION, function_name="get_weather")
    for request in (generate(choice), generate(choice, seed=7, n=2)):
        for result in (await calls_of(stub, request)).values():
            check_calls(result, {"get_weather"}, at_most=1)


async def test_required_calls_one_of_the_tools(family):
    variant, stub = family
    if variant == "none":
        pytest.skip("this template cannot show tools")
    required = pb.ToolChoice(mode=MODE.MODE_REQUIRED)
    single = await calls_of(stub, generate(required, parallel=False, seed=3))
    check_calls(single[0], set(SCHEMAS), at_most=1)
    greedy = await calls_of(stub, generate(required))
    check_calls(greedy[0], set(SCHEMAS))


async def test_bad_tool_requests_are_refused_naming_the_parameter(family):
    variant, stub = family
    cases = [
        (generate(pb.ToolChoice(mode=MODE.MODE_FUNCTION, function_name="nope")), "tool_choice"),
        (generate(pb.ToolChoice(mode=MODE.MODE_REQUIRED), tools=[]), "tool_choice"),
        (generate(None, tools=[pb.Tool(name="bad name", parameters_json="{}")]), "tools"),
        (generate(None, tools=[pb.Tool(name="f", parameters_json="[1]")]), "tools"),
    ]
    if variant == "none":  # tools this template would silently drop
        cases.append((generate(pb.ToolChoice(mode=MODE.MODE_AUTO)), "tools"))
        cases.append((generate(None), "tools"))
    for request, param in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await calls_of(stub, request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(refused.value)[1] == param, request
    if variant == "none":
        reason, _ = error_info(refused.value)
        assert reason == "UNSUPPORTED"
        # tool_choice "none": the tools are not shown, so nothing is dropped silently
        plain = await calls_of(stub, generate(pb.ToolChoice(mode=MODE.MODE_NONE)))
        assert plain[0]["finish"] in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


async def test_auto_with_a_strict_tool_is_text_or_a_valid_call(family):
    """Under "auto" a strict tool's calls are constrained once opened (a lazy grammar); text
    stays free. Whatever the random model picks, a call it makes is valid."""
    variant, stub = family
    if variant == "none":
        pytest.skip("this template cannot show tools")
    strict = [pb.Tool(type="function", name="get_weather", parameters_json=json.dumps(WEATHER),
                      strict=True)]
    for seed in (1, 2):
        result = (await calls_of(stub, generate(pb.ToolChoice(mode=MODE.MODE_AUTO),
                                                tools=strict, seed=seed)))[0]
        if result["calls"]:
            check_calls(result, {"get_weather"})
        else:
            assert result["finish"] in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)


async def test_auto_with_a_response_format_answers_or_calls(family):
    """tools under "auto" and a response format (what the Agents SDK sends every turn of an
    agent with tools and an output_type): each choice is a valid call, or content that is the
    format's JSON; neither is refused. Two seeded choices, whichever each one picks (strict
    tools: a call's arguments follow the schema, as the Agents SDK's function tools ask)."""
    variant, stub = family
    if variant == "none":
        pytest.skip("this template cannot show tools")
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    strict = [pb.Tool(type="function", name=name, parameters_json=json.dumps(schema),
                      strict=True) for name, schema in SCHEMAS.items()]
    request = generate(pb.ToolChoice(mode=MODE.MODE_AUTO), tools=strict, seed=5, n=2)
    request.response_format.CopyFrom(pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
                                                       json_schema=json.dumps(answer)))
    for result in (await calls_of(stub, request)).values():
        if result["calls"]:
            check_calls(result, set(SCHEMAS))
        else:
            assert result["finish"] == pb.FINISH_REASON_STOP, result
            jsonschema.validate(json.loads(result["content"]), answer)


async def test_a_forced_call_cut_by_max_tokens_leaks_no_markup(family):
    """A named call that max_tokens cuts at its first token, right before its arguments, or
    during them: `length`, no content (never the markup), and the call as far as it went (the
    cut tokens are the greedy full call's, read back with Detokenize)."""
    variant, stub = family
    if variant == "none":
        pytest.skip("this template cannot show tools")
    choice = pb.ToolChoice(mode=MODE.MODE_FUNCTION, function_name="get_weather")
    ids: list[int] = []
    async for response in stub.Generate(generate(choice)):
        for delta in response.choices:
            ids += delta.token_ids
    texts = [(await stub.Detokenize(pb.DetokenizeRequest(token_ids=ids[:length]))).text
             for length in range(1, len(ids) + 1)]
    key = '"parameters": {' if variant == "llama3" else '"arguments": {'
    before = max(length for length, text in enumerate(texts, 1) if key not in text)
    during = before + 2  # two tokens into the arguments, which run on for several more
    assert key in texts[during - 1] and during < len(ids) - 2
    for max_tokens in (1, before, during):
        request = generate(choice)
        request.stopping.max_tokens = max_tokens
        result = (await calls_of(stub, request))[0]
        assert result["finish"] == pb.FINISH_REASON_LENGTH, result
        assert result["content"] == "", (max_tokens, texts[max_tokens - 1], result)
        calls = list(result["calls"].values())
        if max_tokens == 1:
            assert calls == []
            continue
        assert [call["name"] for call in calls] == ["get_weather"]
        written = texts[max_tokens - 1]
        expected = written[written.index(key) + len(key) - 1:] if max_tokens == during else ""
        assert calls[0]["arguments"] == expected
