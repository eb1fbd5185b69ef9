"""Grammars that force tool calls, in the model family's own call syntax.

Owns: `tool_call_grammar`, the llguidance Lark grammar for `tool_choice` "required" (one or more
calls, each one of the given tools) or a named function (exactly one call of it), with each
call's arguments a `%json` body of that tool's `parameters` schema. JSON inside a call is written
compactly (", " and ": " separators, no free whitespace), so that a call always ends. A marker
that is a single special token of the tokenizer is matched as that token (`<[id]>`).
"""

from __future__ import annotations

import json

from core.tools.syntax import ToolSyntax

# llguidance's JSON options: fixed separators, as the families' templates write them.
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _literal(text: str, special_ids: dict[str, int]) -> str:
    """A Lark terminal for `text`: the special token itself when `text` is one."""
    if text in special_ids:
        return f"<[{special_ids[text]}]>"
    return json.dumps(text)


def _arguments_schema(parameters: dict | None) -> dict:
    schema = dict(parameters) if parameters else {"type": "object"}
    schema["x-guidance"] = {**_JSON_LAYOUT, **schema.get("x-guidance", {})}
    return schema


def tool_call_grammar(syntax: ToolSyntax, tools: list[dict], *, function_name: str | None = None,
                      parallel: bool = True, special_ids: dict[str, int] | None = None) -> str:
    """The Lark grammar of the calls a request allows.

    `tools` are {"name", "parameters"} dicts; `function_name` limits the output to one call of
    that tool; `parallel` False allows one call only; `special_ids` maps marker text that is a
    single special token to its id."""
    special_ids = special_ids or {}
    allowed = [tool for tool in tools if function_name in (None, tool["name"])]
    single = function_name is not None or not parallel
    lines = []
    for index, tool in enumerate(allowed):
        head = '{"name": ' + json.dumps(tool["name"]) + f', "{syntax.arguments_key}": '
        lines.append(f"fn_{index}: {json.dumps(head)} args_{index} \"}}\"")
        lines.append(f"args_{index}: %json {json.dumps(_arguments_schema(tool['parameters']))}")
    lines.insert(0, "body: " + " | ".join(f"fn_{index}" for index in range(len(allowed))))
    return "\n".join([*_region_rules(syntax, single, special_ids), *lines]) + "\n"


def _region_rules(syntax: ToolSyntax, single: bool, special_ids: dict[str, int]) -> list[str]:
    """`start` in the family's markup: one call, or one or more."""
    def repeated(item: str, separator: str) -> str:
        return item if single else f"{item} ({json.dumps(separator)} {item})*"

    if syntax.name == "hermes":
        open_call = _literal("<tool_call>", special_ids)
        close_call = _literal("</tool_call>", special_ids)
        return [f"start: {repeated('call', chr(10))}",
                f'call: {open_call} "\\n" body "\\n" {close_call}']
    if syntax.name == "mistral":
        marker = _literal("[TOOL_CALLS]", special_ids)
        return [f'start: {marker} " [" {repeated("body", ", ")} "]"']
    return [f"start: {repeated('body', '; ')}"]  # llama3_json: bare JSON calls
