"""Closed JSON Schema objects by default: `close_objects` on pydantic's schemas, the compiled
grammars of a response format and of tool arguments (closed by default, open with
--json-open-objects), and the flag's way from the command line to the request's grammar."""

from __future__ import annotations

import json
from typing import Literal

import llguidance
import llguidance.hf
import pytest
from pydantic import BaseModel
from transformers import AutoTokenizer

from core.cli import _core_args, build_parser
from core.service import convert
from core.service.tools import syntax_named, tool_call_grammar
from core.structured import GrammarSpec
from core.structured.compiler import grammar_text
from core.structured.schema import close_objects
from tandem.v1 import inference_pb2 as pb


class Inner(BaseModel):
    unit: Literal["c", "f"]


class Outer(BaseModel):
    """Pydantic leaves additionalProperties unset on both objects (the inner in $defs)."""

    city: Literal["Paris", "Lyon"]
    inner: Inner
    tags: dict[str, int] = {}


def test_close_objects_closes_listed_objects_only():
    schema = Outer.model_json_schema()
    assert "additionalProperties" not in schema
    closed = close_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["$defs"]["Inner"]["additionalProperties"] is False
    assert closed["properties"]["tags"] == schema["properties"]["tags"]  # set: kept as it is
    assert schema == Outer.model_json_schema()  # a copy: the input is unchanged
    # a property named like a keyword is a name, not a schema; a bare object stays open
    tricky = {"type": "object", "properties": {"properties": {"type": "object"}}}
    assert close_objects(tricky) == {**tricky, "additionalProperties": False}
    assert close_objects({"type": "object"}) == {"type": "object"}
    assert close_objects({"type": "object", "properties": {}, "additionalProperties": True}
                         )["additionalProperties"] is True
    # allOf members keep their keys open (closing each would leave only {}); their insides close
    member = {"properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    merged = close_objects({"allOf": [member]})["allOf"][0]
    assert "additionalProperties" not in merged
    assert merged["properties"]["a"]["additionalProperties"] is False
    listed = close_objects({"anyOf": [{"properties": {"x": {}}}], "items": [{"properties": {}}]})
    assert listed["anyOf"][0]["additionalProperties"] is False
    assert listed["items"][0]["additionalProperties"] is False


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    hf = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))
    return hf, llguidance.hf.from_tokenizer(hf)


def accepts(tokenizer, grammar: str, text: str) -> bool:
    hf, ll_tokenizer = tokenizer
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    return matcher.consume_tokens(hf.encode(text, add_special_tokens=False)) and \
        matcher.is_accepting()


ANSWER = '{"city":"Paris","inner":{"unit":"c"}'


def test_response_format_objects_are_closed_unless_open(tokenizer):
    schema = json.dumps(Outer.model_json_schema())
    closed = grammar_text(GrammarSpec("json_schema", schema, "response_format"), 1 << 16)
    opened = grammar_text(GrammarSpec("json_schema", schema, "response_format",
                                      open_objects=True), 1 << 16)
    for grammar in (closed, opened):
        assert accepts(tokenizer, grammar, ANSWER + "}")
        assert accepts(tokenizer, grammar, ANSWER + ',"tags":{"a":1}}')
    assert not accepts(tokenizer, closed, ANSWER + ',"extra":1}')
    assert not accepts(tokenizer, closed, '{"city":"Paris","inner":{"unit":"c","x":1}}')
    assert accepts(tokenizer, opened, ANSWER + ',"extra":1}')


def test_tool_arguments_are_closed_unless_open(tokenizer):
    tools = [{"name": "Outer", "parameters": Outer.model_json_schema()}]
    hermes = syntax_named("hermes")

    def call(arguments: str) -> str:
        return f'<tool_call>\n{{"name": "Outer", "arguments": {arguments}}}\n</tool_call>'

    good = call('{"city": "Lyon", "inner": {"unit": "f"}}')
    extra = call('{"city": "Lyon", "inner": {"unit": "f"}, "extra": 1}')
    for json_bodies in (False, True):
        closed = llguidance.grammar_from("lark", tool_call_grammar(
            hermes, tools, json_bodies=json_bodies))
        opened = llguidance.grammar_from("lark", tool_call_grammar(
            hermes, tools, json_bodies=json_bodies, open_objects=True))
        assert accepts(tokenizer, closed, good) and accepts(tokenizer, opened, good)
        assert not accepts(tokenizer, closed, extra)
        assert accepts(tokenizer, opened, extra)


def test_the_flag_reaches_the_request_grammar():
    for command in ("serve", "core"):
        assert build_parser().parse_args([command]).json_open_objects is False
    args = build_parser().parse_args(["serve", "--json-open-objects"])
    assert args.json_open_objects and "--json-open-objects" in _core_args(args)
    request = pb.GenerateRequest(text="hi", response_format=pb.ResponseFormat(
        type=pb.ResponseFormat.TYPE_JSON_SCHEMA, json_schema='{"type": "object"}'))
    for open_objects in (False, True):
        policy = convert.PromptPolicy(vocab_size=100, max_model_len=64, max_token_chars=8,
                                      json_open_objects=open_objects)
        (choice,) = convert.generation_requests(request, [1, 2], "r", policy)
        assert choice.grammar.open_objects is open_objects
