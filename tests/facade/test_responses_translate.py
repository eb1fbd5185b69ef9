"""Responses → chat translation (facade/responses/translate.py): input items become the chat
messages a chat client would send, tools / text.format become chat's fields, errors name the
Responses parameter, and the output assembler emits OpenAI's event order."""

from __future__ import annotations

import pytest

from facade.errors import ApiError
from facade.responses.protocol import ResponsesRequest
from facade.responses.translate import (
    OutputAssembler,
    output_message,
    responses_params,
    to_chat_request,
)


def test_input_items_become_chat_messages_after_the_history():
    request = ResponsesRequest.model_validate({
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    })  # fmt: skip
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    chat, conversation = to_chat_request(request, history)
    assert conversation[:2] == history and conversation[0] == {"role": "user", "content": "Hi"}
    roles = [message.role for message in chat.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "tool"]
    assistant = chat.messages[4]
    assert assistant.content == "Checking."
    assert [call.id for call in assistant.tool_calls] == ["c1", "c2"]
    assert chat.messages[5].tool_call_id == "c1" and chat.messages[5].content == "sunny"


def test_tools_text_format_and_sampling_reach_the_chat_request():
    request = ResponsesRequest.model_validate({
        "input": "x", "max_output_tokens": 7, "temperature": 0.5, "seed": 3, "top_k": 4,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False,
        "text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"},
                            "strict": True}},
    })  # fmt: skip
    chat, _ = to_chat_request(request, [])
    assert chat.max_completion_tokens == 7 and chat.seed == 3 and chat.top_k == 4
    assert chat.temperature == 0.5 and chat.parallel_tool_calls is False
    assert chat.tools[0].function.name == "f" and chat.tool_choice.function.name == "f"
    assert chat.response_format.type == "json_schema"
    assert chat.response_format.json_schema.json_schema == {"type": "object"}
    assert chat.response_format.json_schema.strict is True


def test_errors_name_the_responses_parameter():
    with pytest.raises(ApiError) as caught, responses_params():
        raise ApiError(400, "Invalid 'max_completion_tokens': too many.",
                       param="max_completion_tokens")  # fmt: skip
    assert caught.value.param == "max_output_tokens"
    assert caught.value.message == "Invalid 'max_output_tokens': too many."
    with pytest.raises(ApiError) as caught, responses_params():
        to_chat_request(ResponsesRequest.model_validate({"input": []}), [])
    assert caught.value.param == "input"


def test_assembler_events_and_the_stored_assistant_message():
    assembler = OutputAssembler()
    events = assembler.text("Hel") + assembler.text("lo")
    events += assembler.tool_call(0, "call_1", "f", '{"a"')
    events += assembler.tool_call(0, None, None, ":1}")
    events += assembler.finish("completed")
    assert [event["type"] for event in events] == [
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
    ]  # fmt: skip
    output = [item.model_dump(mode="json") for item in assembler.items]
    assert output[0]["content"][0]["text"] == "Hello" and output[1]["arguments"] == '{"a":1}'
    assert output_message(output) == {
        "role": "assistant", "content": "Hello",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "f", "arguments": '{"a":1}'}}],
    }  # fmt: skip
    empty = OutputAssembler()
    assert [e["type"] for e in empty.finish("incomplete")][-1] == "response.output_item.done"
    assert empty.items[0].status == "incomplete" and empty.items[0].content[0].text == ""
