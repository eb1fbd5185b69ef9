"""Grammars that force tool calls, in the model family's own call syntax.

Owns: `tool_call_grammar`, the llguidance Lark grammar for `tool_choice` "required" (one or more
calls, each one of the given tools) or a named function (exactly one call of it), with each
call's arguments a `%json` body of that tool's `parameters` schema; and, for "auto" with
`strict` tools, a lazy grammar: free text, or text up to the family's call marker (a lexeme with
`stop=`) followed by calls as above, so only an opened call is constrained. JSON inside a call
is written compactly (", " and ": " separators, no free whitespace), and its objects are closed
unless the server keeps them open (`open_objects`), so that a call always ends.
For "auto" with a response format, the calls grammar is the alternative to the format's answer
(`GrammarSpec.tool_calls`, composed by the grammar compiler).
A marker that is a single special token of the tokenizer is matched as that token (`<[id]>`).
"""

from __future__ import annotations

import json

from core.service.tools.syntax import ToolSyntax
from core.structured.schema import close_objects

# llguidance's JSON options: fixed separators, as the families' templates write them.
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _literal(text: str, special_ids: dict[str, int]) -> str:
    """A Lark terminal for `text`: the special token itself when `text` is one."""
    if text in special_ids:
        return f"<[{special_ids[text]}]>"
    return json.dumps(text)


def _arguments_schema(parameters: dict | None, open_objects: bool = False) -> dict:
    schema = dict(parameters) if parameters else {"type": "object"}
    if not open_objects:
        schema = close_objects(schema)
    schema["x-guidance"] = {**_JSON_LAYOUT, **schema.get("x-guidance", {})}
    return schema


def _call_schema(syntax: ToolSyntax, tool: dict, open_objects: bool) -> dict:
    """One call object as a JSON Schema: the name, then the arguments. The arguments' `$defs`
    (and `definitions`) move to the root, where their `#/$defs/...` references point."""
    arguments = _arguments_schema(tool["parameters"], open_objects)
    layout = arguments.pop("x-guidance")
    schema = {"type": "object", "properties": {"name": {"const": tool["name"]}},
              "required": ["name", syntax.arguments_key], "additionalProperties": False}
    for key in ("$defs", "definitions"):
        if key in arguments:
            schema[key] = arguments.pop(key)
    schema["properties"][syntax.arguments_key] = arguments
    schema["x-guidance"] = layout
    return schema


def _auto_tools(tools: list[dict]) -> list[dict]:
    """What "auto" enforces of a call: a strict tool's schema; any JSON object otherwise."""
    return [{"name": tool["name"], "parameters": tool["parameters"] if tool.get("strict")
             else {"type": "object"}} for tool in tools]


def auto_calls_grammar(syntax: ToolSyntax, tools: list[dict], *, parallel: bool = True,
                       special_ids: dict[str, int] | None = None,
                       open_objects: bool = False) -> str:
    """"auto" with a response format: the calls the output may be instead of the format's
    answer (`GrammarSpec.tool_calls`); a strict tool's arguments follow its schema, another's
    are any JSON object, as under `auto_tool_grammar`."""
    return tool_call_grammar(syntax, _auto_tools(tools), parallel=parallel,
                             special_ids=special_ids, json_bodies=syntax.bare_object_start,
                             open_objects=open_objects)


def auto_tool_grammar(syntax: ToolSyntax, tools: list[dict], *, parallel: bool = True,
                      special_ids: dict[str, int] | None = None,
                      open_objects: bool = False) -> str:
    """"auto" with strict tools: the model may write text, or open calls, which must then be
    valid calls of the given tools (a non-strict tool's arguments: any JSON object)."""
    loose = _auto_tools(tools)
    # the lazy lexeme consumes the marker: the calls rule continues right after it
    forced = tool_call_grammar(syntax, loose, parallel=parallel, special_ids=special_ids,
                               opened=not syntax.bare_object_start, open_objects=open_objects)
    forced = forced.replace("start:", "calls:", 1)
    if syntax.bare_object_start:  # Llama 3: a call is the whole output, from its first `{`
        return 'start: TEXT | calls\nTEXT: /([^{\\s]|\\s+[^{\\s])(.|\\n)*/\n' + forced
    head = f"text_then_call[stop={json.dumps(syntax.start_markers[0])}]: /(.|\\n)*/"
    return "\n".join(["start: free_text | text_then_call calls", "free_text: /(.|\\n)*/",
                      head, forced])


def tool_call_grammar(syntax: ToolSyntax, tools: list[dict], *, function_name: str | None = None,
                      parallel: bool = True, special_ids: dict[str, int] | None = None,
                      opened: bool = False, json_bodies: bool = False,
                      open_objects: bool = False) -> str:
    """The Lark grammar of the calls a request allows.

    `tools` are {"name", "parameters"} dicts; `function_name` limits the output to one call of
    that tool; `parallel` False allows one call only; `special_ids` maps marker text that is a
    single special token to its id; `opened`: the output already holds the first marker;
    `json_bodies`: each call object is one `%json` (name as a `const`), not text around the
    arguments' `%json`: needed where a call and another sub-grammar's JSON both start with `{`
    (llguidance's lexer would commit to the text); `open_objects`: the arguments' objects
    without `additionalProperties` stay open (else they are closed, the server's default)."""
    special_ids = special_ids or {}
    allowed = [tool for tool in tools if function_name in (None, tool["name"])]
    single = function_name is not None or not parallel
    lines = []
    for index, tool in enumerate(allowed):
        if json_bodies:
            schema = _call_schema(syntax, tool, open_objects)
            lines.append(f"fn_{index}: %json {json.dumps(schema)}")
            continue
        head = '{"name": ' + json.dumps(tool["name"]) + f', "{syntax.arguments_key}": '
        lines.append(f"fn_{index}: {json.dumps(head)} args_{index} \"}}\"")
        schema = _arguments_schema(tool["parameters"], open_objects)
        lines.append(f"args_{index}: %json {json.dumps(schema)}")
    lines.insert(0, "body: " + " | ".join(f"fn_{index}" for index in range(len(allowed))))
    return "\n".join([*_region_rules(syntax, single, special_ids, opened), *lines]) + "\n"


def _region_rules(syntax: ToolSyntax, single: bool, special_ids: dict[str, int],
                  opened: bool) -> list[str]:
    """`start` in the family's markup: one call, or one or more (`opened`: without the first
    call's marker)."""
    def repeated(item: str, separator: str) -> str:
        return item if single else f"{item} ({json.dumps(separator)} {item})*"

    if syntax.name == "hermes":
        open_call = _literal("<tool_call>", special_ids)
        close_call = _literal("</tool_call>", special_ids)
        rest = f'call_rest: "\\n" body "\\n" {close_call}'
        if single:
            return [f"start: {'' if opened else open_call} call_rest", rest]
        return [f"start: {'' if opened else open_call} call_rest "
                f'("\\n" {open_call} call_rest)*', rest]
    if syntax.name == "mistral":
        marker = "" if opened else _literal("[TOOL_CALLS]", special_ids)
        return [f'start: {marker} " [" {repeated("body", ", ")} "]"']
    return [f"start: {repeated('body', '; ')}"]  # llama3_json: bare JSON calls
