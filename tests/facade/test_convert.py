"""OpenAI request models → GenerateRequest: optional fields stay unset unless the client set
them."""

from __future__ import annotations

import json

import pytest

from facade.convert import chat_to_generate, completion_to_generates
from facade.errors import ApiError
from facade.protocol import ChatCompletionRequest, CompletionRequest
from tandem.v1 import inference_pb2 as pb

USER = [{"role": "user", "content": "hi"}]


def chat(**fields) -> pb.GenerateRequest:
    return chat_to_generate(ChatCompletionRequest.model_validate({"messages": USER, **fields}), "m")


def test_unset_sampling_fields_stay_unset():
    generate = chat()
    assert generate.model == "m"
    for name in ("temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty"):
        assert not generate.sampling.HasField(name), name
    assert not generate.stopping.HasField("max_tokens")
    assert not generate.HasField("n") and not generate.HasField("logprobs")


def test_zero_temperature_is_sent():
    generate = chat(temperature=0, top_k=-1, seed=7, logit_bias={"5": -100})
    assert generate.sampling.HasField("temperature") and generate.sampling.temperature == 0
    assert generate.sampling.top_k == 0 and generate.sampling.seed == 7
    assert dict(generate.sampling.logit_bias) == {5: -100.0}


def test_chat_input_parts_tools_and_template_options():
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url",
             "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]  # fmt: skip
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    generate = chat_to_generate(
        ChatCompletionRequest.model_validate(
            {
                "messages": messages,
                "tools": tools,
                "max_completion_tokens": 9,
                "stop": "END",
                "chat_template_kwargs": {"enable_thinking": False},
                "add_generation_prompt": True,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                },
                "cache_salt": "tenant-a",
                "n": 2,
                "logprobs": True,
                "top_logprobs": 3,
            }
        ),  # fmt: skip
        "m",
    )
    chat_input = generate.chat
    # "developer" reaches the chat template as "system" (HF templates lack it)
    assert [m.role for m in chat_input.messages] == ["system", "user", "assistant", "tool"]
    assert chat_input.messages[1].content[1].image_url.detail == "low"
    assert chat_input.messages[2].tool_calls[0].function.name == "f"
    assert chat_input.messages[3].tool_call_id == "call_1"
    assert json.loads(chat_input.tools[0].parameters_json) == {"type": "object"}
    assert json.loads(chat_input.chat_template_kwargs_json) == {"enable_thinking": False}
    assert chat_input.add_generation_prompt is True
    assert generate.stopping.max_tokens == 9 and list(generate.stopping.stop) == ["END"]
    assert generate.response_format.type == pb.ResponseFormat.TYPE_JSON_SCHEMA
    assert json.loads(generate.response_format.json_schema) == {"type": "object"}
    assert (generate.cache_salt, generate.n, generate.top_logprobs) == ("tenant-a", 2, 3)


def test_tools_and_tool_choice_go_to_the_core_and_empty_tools_are_refused():
    tools = [{"type": "function", "function": {"name": "f", "strict": True}}]
    none = chat(tools=tools, tool_choice="none").chat
    assert len(none.tools) == 1 and none.tool_choice.mode == pb.ToolChoice.MODE_NONE
    required = chat(tools=tools, tool_choice="required", parallel_tool_calls=False).chat
    assert required.tool_choice.mode == pb.ToolChoice.MODE_REQUIRED
    assert required.parallel_tool_calls is False and required.tools[0].strict is True
    named = chat(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}}).chat
    assert (named.tool_choice.mode, named.tool_choice.function_name) == (
        pb.ToolChoice.MODE_FUNCTION, "f")
    legacy = chat(functions=[{"name": "g"}], function_call={"name": "g"}).chat
    assert legacy.tool_choice.function_name == "g" and legacy.tools[0].name == "g"
    assert not chat(tools=tools).chat.HasField("tool_choice")
    with pytest.raises(ApiError) as raised:
        chat(tools=[], tool_choice="auto")
    assert raised.value.param == "tools" and raised.value.status_code == 400


def test_legacy_function_role_and_functions_become_tool_and_tools():
    messages = [*USER, {"role": "function", "name": "f", "content": "42"}]
    generate = chat(messages=messages, functions=[{"name": "f"}], function_call="auto")
    assert [(m.role, m.name) for m in generate.chat.messages] == [("user", ""), ("tool", "f")]
    assert [tool.name for tool in generate.chat.tools] == ["f"]
    legacy_none = chat(functions=[{"name": "f"}], function_call="none").chat
    assert legacy_none.tool_choice.mode == pb.ToolChoice.MODE_NONE


def test_text_parts_are_sent_in_order():
    parts = [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]
    message = chat(messages=[{"role": "user", "content": parts}]).chat.messages[0]
    assert [part.text for part in message.content] == ["a ", "b"]


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=5, max_completion_tokens=7).stopping.max_tokens == 7
    assert chat(max_tokens=5).stopping.max_tokens == 5


def test_completions_one_request_per_prompt():
    request = CompletionRequest.model_validate({"prompt": [[1, 2], [3]], "logprobs": 2})
    generates = completion_to_generates(request, "m")
    assert [list(g.tokens.ids) for g in generates] == [[1, 2], [3]]
    assert generates[0].logprobs and generates[0].top_logprobs == 2
    assert generates[0].stopping.max_tokens == 16  # OpenAI's default for completions
    text = completion_to_generates(CompletionRequest.model_validate({"prompt": "hey"}), "m")
    assert [g.text for g in text] == ["hey"]


def completion(**fields) -> list[pb.GenerateRequest]:
    return completion_to_generates(CompletionRequest.model_validate({"prompt": "a b", **fields}),
                                   "m")


def test_sampling_extras_reach_the_core():
    generate = chat(bad_words=["x y"], allowed_token_ids=[3, 4], prompt_logprobs=2,
                    presence_penalty=0.5, repetition_penalty=1.2, min_tokens=3)
    assert list(generate.sampling.bad_words) == ["x y"]
    assert list(generate.sampling.allowed_token_ids.ids) == [3, 4]
    assert generate.prompt_logprobs == 2 and generate.stopping.min_tokens == 3
    assert generate.sampling.presence_penalty == 0.5
    assert not chat().sampling.HasField("allowed_token_ids")
    assert not chat().HasField("prompt_logprobs")


def test_echo_logprobs_and_best_of_on_completions():
    (generate,) = completion(echo=True, logprobs=3)
    assert generate.prompt_logprobs == 3 and generate.top_logprobs == 3
    (generate,) = completion(echo=True, max_tokens=0)
    assert generate.prompt_logprobs == 0 and generate.stopping.max_tokens == 0
    (generate,) = completion(n=2, best_of=5)
    assert generate.n == 5  # the facade keeps the best 2
    with pytest.raises(ApiError) as error:
        completion(n=1, best_of=2, stream=True)
    assert error.value.param == "best_of"
    with pytest.raises(ApiError) as error:
        completion(max_tokens=0)
    assert error.value.param == "max_tokens"


def test_structured_outputs_and_guided_fields_reach_the_core():
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}}
    strict = chat(response_format={"type": "json_schema", "json_schema": {
        "name": "thing", "schema": schema, "strict": True}}).response_format
    assert (strict.name, strict.strict, json.loads(strict.json_schema)) == ("thing", True, schema)
    assert not chat(response_format={"type": "json_schema", "json_schema": {
        "schema": schema}}).response_format.HasField("strict")
    cases = [
        ({"structured_outputs": {"json": schema}}, "structured_outputs", "json", schema),
        ({"structured_outputs": {"json": json.dumps(schema)}}, "structured_outputs", "json",
         schema),
        ({"structured_outputs": {"regex": "a+"}}, "structured_outputs", "regex", "a+"),
        ({"structured_outputs": {"choice": ["x", "y"]}}, "structured_outputs", "choice",
         ["x", "y"]),
        ({"structured_outputs": {"grammar": "root ::= \"a\""}}, "structured_outputs", "grammar",
         "root ::= \"a\""),
        ({"structured_outputs": {"json_object": True}}, "structured_outputs", "json_object",
         True),
        ({"guided_json": schema}, "guided_json", "json", schema),
        ({"guided_regex": "b*"}, "guided_regex", "regex", "b*"),
        ({"guided_choice": ["p"]}, "guided_choice", "choice", ["p"]),
        ({"guided_grammar": "start: \"a\""}, "guided_grammar", "grammar", "start: \"a\""),
    ]
    for fields, param, key, value in cases:
        structured = chat(**fields).structured_outputs
        assert (structured.param, structured.WhichOneof("constraint")) == (param, key), fields
        got = getattr(structured, key)
        got = (json.loads(got) if key == "json" else list(got.choices) if key == "choice"
               else got)
        assert got == value, fields
    completion = completion_to_generates(CompletionRequest.model_validate(
        {"prompt": "x", "guided_regex": "c"}), "m")[0]
    assert completion.structured_outputs.regex == "c"
    assert not chat().HasField("structured_outputs")


@pytest.mark.parametrize(("fields", "param"), [
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice"),
    ({"structured_outputs": {"regex": "a"}, "guided_json": {}}, "guided_json"),
])
def test_two_constraints_are_refused_naming_the_second(fields, param):
    with pytest.raises(ApiError) as raised:
        chat(**fields)
    assert raised.value.status_code == 400 and raised.value.param == param
