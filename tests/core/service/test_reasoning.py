"""Reasoning output through the real core over gRPC, and its parser and plan alone.

The core serves a tiny Qwen3 (random weights, Qwen3's own template) whose template opens the think
block in the generation prompt, as Qwen3-Thinking-2507's does (`enable_thinking: false` closes an
empty block instead): the output starts inside the block, so every choice reasons. The think
block's text arrives in `reasoning_text`, never in `text` or in tool calls; a response format or a
forced tool call applies after the block, and `thinking_token_budget` closes the block."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import grpc
import jsonschema
import pytest

from core.config import ServerConfig
from core.service.convert import template_kwargs
from core.service.reasoning import BlockState, ReasoningParser, select_syntax
from core.service.reasoning.syntax import SYNTAXES, block_state
from core.service.server import CoreServer
from core.tokenizer import Tokenizer
from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import GRPC_CORE_MODEL, family_engine_config
from tests.core.service.test_core_grpc import error_info

QWEN3 = SYNTAXES["qwen3"]
SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Lyon"]}, "days": {"type": "integer"}},
    "required": ["city", "days"], "additionalProperties": False}
PLAIN_PROMPT = "'<|im_start|>assistant\\n' -}}"
THINKING_PROMPT = ("'<|im_start|>assistant\\n' -}}{%- if not (enable_thinking is defined and "
                   "enable_thinking is false) -%}{{- '<think>\\n' -}}{%- endif -%}")


# -- the parser alone ---------------------------------------------------------------------------

def _parse(syntax, state, pieces: list[str]) -> tuple[str, str, str]:
    parser = ReasoningParser(syntax, state)
    reasoning = answer = joined = ""
    for delta in [*map(parser.feed, pieces), parser.finish()]:
        assert not (delta.answer and parser.state is not BlockState.ANSWER)
        reasoning, answer = reasoning + delta.reasoning, answer + delta.answer
        joined += delta.raw  # every piece, markup included, in stream order
    return reasoning, answer, joined


@pytest.mark.parametrize("state, raw, reasoning, answer", [
    (BlockState.MAY_OPEN, "<think>\nstep one\n</think>\n\nThe answer.", "\nstep one\n",
     "The answer."),
    (BlockState.MAY_OPEN, "No thinking today.", "", "No thinking today."),
    (BlockState.MAY_OPEN, "  <thin k>", "", "  <thin k>"),
    (BlockState.INSIDE, "a < b </thin and </think>{\"x\": 1}", "a < b </thin and ", '{"x": 1}'),
    (BlockState.INSIDE, "cut inside </thi", "cut inside </thi", ""),
    (BlockState.ANSWER, "<think>is text</think>", "", "<think>is text</think>"),
])
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_parser_splits_exactly(state, raw, reasoning, answer, chunk):
    """Reasoning, markup and answer join back to the raw output, however it is cut into deltas,
    and no marker text reaches either side."""
    pieces = [raw[i:i + chunk] for i in range(0, len(raw), chunk)]
    got = _parse(QWEN3, state, pieces)
    assert got == (reasoning, answer, raw)


def test_deepseek_r1_starts_inside():
    syntax = select_syntax("deepseek_r1", None)
    assert block_state(syntax, "<｜Assistant｜>") is BlockState.INSIDE
    assert _parse(syntax, BlockState.INSIDE, ["why", "</think>", "so"])[:2] == ("why", "so")


def test_detection_and_block_state():
    assert select_syntax("auto", "{{ '<think>' }}...{{ '</think>' }}") == QWEN3
    assert select_syntax("auto", "{{ messages }}") is None
    assert select_syntax("none", "</think>") is None
    assert block_state(QWEN3, "<|im_start|>assistant\n") is BlockState.MAY_OPEN
    assert block_state(QWEN3, "<|im_start|>assistant\n<think>\n") is BlockState.INSIDE
    assert block_state(QWEN3, "assistant\n<think>\n\n</think>\n\n") is BlockState.ANSWER
    # an earlier turn's block does not close this one
    assert block_state(QWEN3, "<think>a</think>b<|im_end|>\n<|im_start|>assistant\n") \
        is BlockState.MAY_OPEN


@pytest.mark.parametrize("raw, message", [
    ('{"messages": []}', "set by the server"),
    ('{"add_generation_prompt": false}', "set by the server"),
    ('{"chat_template": "{{ 7 }}"}', "set by the server"),
    ('{"__class__": 1}', "set by the server"),
    ('{"not an identifier": 1}', "not a template variable"),
    ('{"x": ' + "[" * 20 + "]" * 20 + "}", "nests deeper"),
    ('{"x": ' + "[" * 5000 + "]" * 5000 + "}", "longer than"),
    ("[" * 3000 + "]" * 3000, "nests too deeply"),
])
def test_template_kwargs_bounded(raw, message):
    """CVE-2025-62426's class: chat_template_kwargs cannot reach the renderer's own parameters
    or the variables the server sets, and is bounded in size and depth."""
    from core.errors import InvalidParameter

    with pytest.raises(InvalidParameter, match=message) as info:
        template_kwargs(raw)
    assert info.value.param == "chat_template_kwargs"


def test_template_kwargs_plain_values_pass():
    assert template_kwargs('{"enable_thinking": false, "depth": {"a": [1]}}') == {
        "enable_thinking": False, "depth": {"a": [1]}}


# -- through a core ------------------------------------------------------------------------------

def write_thinking_model(qwen3_dir: Path, model_dir: Path) -> Path:
    """A copy of the tiny Qwen3 whose template opens the think block (Qwen3-Thinking-2507's)."""
    shutil.copytree(qwen3_dir, model_dir)
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        text = (model_dir / name).read_text()
        if name == "tokenizer_config.json":
            config = json.loads(text)
            config.pop("chat_template", None)
            text = json.dumps(config)
        else:
            assert PLAIN_PROMPT in text
            text = text.replace(PLAIN_PROMPT, THINKING_PROMPT)
        (model_dir / name).write_text(text)
    return model_dir


THINKING_MAX_MODEL_LEN = 768  # Qwen3's tool prompt is ~500 tokens of the tiny tokenizer


@pytest.fixture(scope="module")
async def thinking_core(tiny_models, tmp_path_factory):
    """A core serving the tiny Qwen3 with a template that opens the think block."""
    model_dir = write_thinking_model(tiny_models["qwen3"],
                                     tmp_path_factory.mktemp("qwen3-thinking") / "model")
    config = ServerConfig(model_dir=Path(model_dir), model_name="tiny-qwen3", grpc_port=0,
                          engine=replace(family_engine_config("qwen3"),
                                         max_model_len=THINKING_MAX_MODEL_LEN))
    server = CoreServer(config)
    port = await server.start()
    await server.load()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.InferenceStub(channel), Tokenizer(model_dir)
    await channel.close()
    await server.drain_and_stop()


def _chat(*, budget: int | None = None, max_tokens: int = 40, **fields) -> pb.GenerateRequest:
    chat = pb.ChatInput(messages=[pb.ChatMessage(role="user", content=[pb.ContentPart(
        text="Weather in Paris for how many days?")])])
    if budget is not None:
        chat.thinking_token_budget = budget
    for name, value in fields.pop("chat", {}).items():
        setattr(chat, name, value)
    request = pb.GenerateRequest(chat=chat, stopping=pb.StoppingCriteria(max_tokens=max_tokens),
                                 **fields)
    request.sampling.temperature = 0.0
    return request


async def _run(stub, request) -> dict:
    out = {"reasoning": "", "text": "", "ids": [], "calls": {}, "usage": None, "finish": 0}
    async for response in stub.Generate(request):
        out["usage"] = response.usage
        for delta in response.choices:
            out["reasoning"] += delta.reasoning_text
            out["text"] += delta.text
            out["ids"] += delta.token_ids
            out["finish"] = delta.finish_reason or out["finish"]
            for call in delta.tool_calls:
                parts = out["calls"].setdefault(call.index, ["", ""])
                parts[0] += call.function.name
                parts[1] += call.function.arguments
    return out


def _assert_joins(out: dict, tokenizer: Tokenizer) -> None:
    """The output starts inside the block: reasoning, the end marker, whitespace, then the
    answer is the raw text (the answer here: text, or the calls' markup)."""
    raw = tokenizer.decode(out["ids"])
    assert raw.startswith(out["reasoning"])
    rest = raw[len(out["reasoning"]):]
    assert rest.startswith("</think>")
    assert "</think>" not in out["reasoning"] and "<think>" not in out["text"]
    if not out["calls"]:
        assert rest[len("</think>"):].lstrip() == out["text"]


async def test_json_schema_after_the_block(thinking_core):
    """The budget closes the block; the response format constrains what follows."""
    stub, tokenizer = thinking_core
    request = _chat(budget=6, max_tokens=60, response_format=pb.ResponseFormat(
        type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=json.dumps(SCHEMA)))
    out = await _run(stub, request)
    jsonschema.validate(json.loads(out["text"]), SCHEMA)
    assert "city" not in out["reasoning"]
    _assert_joins(out, tokenizer)
    # the block's tokens, the end marker included, and at most the budget plus the marker
    assert 1 <= out["usage"].reasoning_tokens <= 7
    assert out["usage"].reasoning_tokens < out["usage"].completion_tokens


async def test_forced_tool_call_after_the_block(thinking_core):
    stub, tokenizer = thinking_core
    request = _chat(budget=4, max_tokens=200)
    request.chat.tools.append(pb.Tool(type="function", name="get_weather",
                                      parameters_json=json.dumps(SCHEMA)))
    request.chat.tool_choice.mode = pb.ToolChoice.MODE_REQUIRED
    request.chat.parallel_tool_calls = False
    out = await _run(stub, request)
    assert out["finish"] == pb.FINISH_REASON_TOOL_CALLS, (out, tokenizer.decode(out["ids"]))
    name, arguments = out["calls"][0]
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), SCHEMA)
    assert "<tool_call>" not in out["text"] + out["reasoning"]
    assert "get_weather" not in out["reasoning"]
    _assert_joins(out, tokenizer)


async def test_auto_tools_with_a_response_format_after_the_block(thinking_core):
    """Tools under "auto" and a response format on a reasoning model: the block, then the
    format's answer or a call (whichever the model picks), never in the reasoning."""
    stub, tokenizer = thinking_core
    bounded = {**SCHEMA, "properties": {**SCHEMA["properties"],
                                        "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
    request = _chat(budget=4, max_tokens=200, response_format=pb.ResponseFormat(
        type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema=json.dumps(bounded)))
    request.chat.tools.append(pb.Tool(type="function", name="get_weather", strict=True,
                                      parameters_json=json.dumps(bounded)))
    request.chat.parallel_tool_calls = False  # one call at most: the grammar then ends
    out = await _run(stub, request)
    if out["calls"]:
        assert out["finish"] == pb.FINISH_REASON_TOOL_CALLS and out["text"] == "", out
        name, arguments = out["calls"][0]
        assert name == "get_weather"
        jsonschema.validate(json.loads(arguments), bounded)
    else:
        assert out["finish"] == pb.FINISH_REASON_STOP, out
        jsonschema.validate(json.loads(out["text"]), bounded)
    assert "city" not in out["reasoning"] and "<tool_call>" not in out["text"]
    _assert_joins(out, tokenizer)


async def test_unbounded_block_is_reasoning(thinking_core):
    """No budget, no constraint: a random model rarely closes its block, and all of what it
    writes before closing is reasoning, none of it content."""
    stub, tokenizer = thinking_core
    out = await _run(stub, _chat(max_tokens=12))
    raw = tokenizer.decode(out["ids"])
    if "</think>" in raw:
        _assert_joins(out, tokenizer)
    else:
        assert out["reasoning"] == raw and out["text"] == ""
        assert out["usage"].reasoning_tokens == out["usage"].completion_tokens == 12


async def test_thinking_off_is_all_answer(thinking_core):
    """enable_thinking false: the template closes an empty block, the output is the answer and
    the response format applies from its first token."""
    stub, _ = thinking_core
    request = _chat(budget=5, max_tokens=60, chat={
        "chat_template_kwargs_json": '{"enable_thinking": false}'},
        response_format=pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
                                          json_schema=json.dumps(SCHEMA)))
    out = await _run(stub, request)
    assert out["reasoning"] == "" and out["usage"].reasoning_tokens == 0
    jsonschema.validate(json.loads(out["text"]), SCHEMA)


async def test_history_reasoning_reaches_the_template(thinking_core):
    stub, tokenizer = thinking_core
    messages = [pb.ChatMessage(role="user", content=[pb.ContentPart(text="hi")]),
                pb.ChatMessage(role="assistant", content=[pb.ContentPart(text="hello")],
                               reasoning_content="greet back")]
    tokenized = await stub.Tokenize(pb.TokenizeRequest(chat=pb.ChatInput(
        messages=messages, continue_final_message=True, add_generation_prompt=False)))
    assert "<think>\ngreet back\n</think>" in tokenizer.decode(list(tokenized.token_ids))


async def test_bad_reasoning_requests(thinking_core, grpc_core):
    stub, _ = thinking_core
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _run(stub, _chat(chat={"chat_template_kwargs_json": '{"tools": []}'}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(info.value)[1] == "chat_template_kwargs"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_core.port}") as channel:
        request = _chat(budget=3)
        request.model = GRPC_CORE_MODEL  # a Llama: no think block
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _run(pb_grpc.InferenceStub(channel), request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(info.value)[1] == "thinking_token_budget"


async def test_token_out_mode_leaves_the_block_to_the_caller(thinking_core):
    """detokenize false on a reasoning model: token ids only, no reasoning split, the budget
    still closes the block; tools, whose calls are parsed from the text, are refused."""
    stub, tokenizer = thinking_core
    request = _chat(budget=3, max_tokens=12)
    request.detokenize = False
    out = await _run(stub, request)
    assert out["text"] == out["reasoning"] == "" and len(out["ids"]) >= 4
    assert "</think>" in tokenizer.decode(out["ids"])
    request.chat.tools.append(pb.Tool(type="function", name="get_weather",
                                      parameters_json=json.dumps(SCHEMA)))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _run(stub, request)
    assert error_info(info.value)[1] == "tools"
