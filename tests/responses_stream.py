"""What every Responses stream must hold, checked by each test that streams one: a coding agent
(Codex, opencode) pairs stream items with the final response by id.

`check_stream(events)` takes the stream's events (the SDK's event objects or their JSON) and
asserts: sequence numbers count up from 0; the stream ends with `response.completed`,
`response.incomplete` or `response.failed`; each item's `output_item.added` and
`output_item.done` carry the same id, in the final response's order, and the `.done` item equals
the final response's item; each finished item sent its `*.done` events (`output_text.done` +
`content_part.done` with the full text, `function_call_arguments.done` with the full arguments,
`custom_tool_call_input.done` with a custom tool's full input, `reasoning_text.done`), and its
deltas join to that text. A failed stream's items are the failed response's, whatever their
state. It returns the final response (JSON).
"""

from __future__ import annotations

from typing import Any

FINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")


SDK_ADDED = ("parsed", "parsed_arguments")  # what the SDK's stream helper computes itself


def _json(event: Any) -> dict:
    """An event as the server sent it: an SDK event without its unset (None) fields and the
    fields the SDK's helper adds."""
    if isinstance(event, dict):
        return event
    return _without(event.model_dump(mode="json", exclude_none=True))


def _without(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without(v) for k, v in value.items() if k not in SDK_ADDED}
    if isinstance(value, list):
        return [_without(v) for v in value]
    return value


def check_stream(events: list[Any]) -> dict:
    events = [_json(event) for event in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] in FINAL_TYPES, events[-1]["type"]
    final = events[-1]["response"]
    output = final["output"]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [e["item"]["id"] for e in added] == [item["id"] for item in output]
    assert [e["output_index"] for e in added] == list(range(len(output)))
    if final["status"] == "failed":
        return final
    assert [e["item"]["id"] for e in done] == [item["id"] for item in output]
    for event, item in zip(done, output, strict=True):  # the same content as the final response
        assert event["item"] == item, (event["item"], item)
    for index, item in enumerate(output):
        mine = [e for e in events if e.get("output_index") == index]
        kinds = [e["type"] for e in mine]
        if item["type"] == "message":
            text = item["content"][0]["text"]
            deltas = "".join(e["delta"] for e in mine if e["type"] == "response.output_text.delta")
            texts = [e["text"] for e in mine if e["type"] == "response.output_text.done"]
            parts = [e["part"] for e in mine if e["type"] == "response.content_part.done"]
            assert deltas == text and texts == [text] and parts == [item["content"][0]], kinds
        elif item["type"] == "function_call":
            deltas = "".join(e["delta"] for e in mine
                             if e["type"] == "response.function_call_arguments.delta")
            finished = [e["arguments"] for e in mine
                        if e["type"] == "response.function_call_arguments.done"]
            assert deltas == item["arguments"] and finished == [item["arguments"]], kinds
        elif item["type"] == "custom_tool_call":
            deltas = "".join(e["delta"] for e in mine
                             if e["type"] == "response.custom_tool_call_input.delta")
            finished = [e["input"] for e in mine
                        if e["type"] == "response.custom_tool_call_input.done"]
            assert deltas == item["input"] and finished == [item["input"]], kinds
        elif item["type"] == "reasoning":
            text = item["content"][0]["text"]
            deltas = "".join(e["delta"] for e in mine
                             if e["type"] == "response.reasoning_text.delta")
            finished = [e["text"] for e in mine if e["type"] == "response.reasoning_text.done"]
            assert deltas == text and finished == [text], kinds
        for event in mine:
            if "item_id" in event:
                assert event["item_id"] == item["id"], event
    return final
