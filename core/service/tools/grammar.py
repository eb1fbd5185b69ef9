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

A custom tool's call (OpenAI's free-form `custom` tools; Hermes markup only) is its name as a
call object, a newline, and the raw input, not JSON:
`<tool_call>\n{"name": "x"}\nINPUT\n</tool_call>`. Free text is a lazy lexeme that ends at
the first `</tool_call>` (the parser drops one newline before it); a Lark or regex format is
a named sub-grammar (`@custom_0`) that must end by itself before the close. With such tools a
grammar is llguidance's JSON of named grammars rather than Lark text (`compose`).
"""

from __future__ import annotations

import json

from core.errors import InvalidParameter
from core.service.tools.syntax import ToolSyntax
from core.structured.compiler import GrammarLimits, one_line
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
    """What "auto" enforces of a call: a strict tool's schema; any JSON object otherwise; a
    custom tool's format always."""
    return [{**tool, "parameters": tool["parameters"] if tool.get("strict")
             else {"type": "object"}} for tool in tools]


def custom_header(name: str) -> str:
    """What opens a custom tool's call inside the call region, before its raw input."""
    return '{"name": ' + json.dumps(name) + "}\n"


def compose(lark: str, subs: list[dict]) -> str:
    """Lark text, or with sub-grammars llguidance's JSON of named grammars (Lark first)."""
    if not subs:
        return lark
    return json.dumps({"grammars": [{"lark_grammar": lark}, *subs]})


def _split(grammar: str) -> tuple[str, list[dict]]:
    """`compose`'s inverse: the main Lark text and the sub-grammars."""
    if not grammar.lstrip().startswith("{"):
        return grammar, []
    main, *subs = json.loads(grammar)["grammars"]
    return main["lark_grammar"], subs


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
    forced, subs = _split(tool_call_grammar(syntax, loose, parallel=parallel,
                                            special_ids=special_ids,
                                            opened=not syntax.bare_object_start,
                                            open_objects=open_objects))
    forced = forced.replace("start:", "calls:", 1)
    if syntax.bare_object_start:  # Llama 3: a call is the whole output, from its first `{`
        return compose('start: TEXT | calls\nTEXT: /([^{\\s]|\\s+[^{\\s])(.|\\n)*/\n' + forced,
                       subs)
    head = f"text_then_call[stop={json.dumps(syntax.start_markers[0])}]: /(.|\\n)*/"
    return compose("\n".join(["start: free_text | text_then_call calls",
                               "free_text: /(.|\\n)*/", head, forced]), subs)


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
    without `additionalProperties` stay open (else they are closed, the server's default).
    A tool with a "custom" entry ({"syntax": "lark" | "regex" | "", "definition"}) is called
    with raw input (module docstring): the result is then llguidance's JSON of grammars."""
    special_ids = special_ids or {}
    allowed = [tool for tool in tools if function_name in (None, tool["name"])]
    single = function_name is not None or not parallel
    lines, subs = [], []
    # with custom tools (Hermes), each call closes itself: free text ends at the close marker
    customs = any(tool.get("custom") is not None for tool in allowed)
    close_call = _literal("</tool_call>", special_ids)
    ending = f' "\\n" {close_call}' if customs else ""
    for index, tool in enumerate(allowed):
        custom = tool.get("custom")
        if custom is not None:
            lines.extend(_custom_call_rules(tool["name"], custom, index, close_call, subs))
            continue
        if json_bodies:
            schema = _call_schema(syntax, tool, open_objects)
            lines.append(f"fn_{index}: %json {json.dumps(schema)}{ending}")
            continue
        head = '{"name": ' + json.dumps(tool["name"]) + f', "{syntax.arguments_key}": '
        lines.append(f"fn_{index}: {json.dumps(head)} args_{index} \"}}\"{ending}")
        schema = _arguments_schema(tool["parameters"], open_objects)
        lines.append(f"args_{index}: %json {json.dumps(schema)}")
    lines.insert(0, "body: " + " | ".join(f"fn_{index}" for index in range(len(allowed))))
    regions = _region_rules(syntax, single, special_ids, opened, self_closing=customs)
    return compose("\n".join([*regions, *lines]) + "\n", subs)


def _custom_call_rules(name: str, custom: dict, index: int, close_call: str,
                       subs: list[dict]) -> list[str]:
    """The rules of one custom tool's call, up to its close marker (its format's sub-grammars
    go to `subs`): its header, then the input; free text is a lazy lexeme that ends at the
    first close marker (the parser drops one newline before it)."""
    head = json.dumps(custom_header(name))
    if custom.get("syntax") in ("lark", "regex"):
        subs.extend(custom_sub_grammar(custom, f"custom_{index}"))
        return [f'fn_{index}: {head} @custom_{index} "\\n" {close_call}']
    if close_call.startswith("<["):  # a special token: no text can spell it
        return [f"fn_{index}: {head} input_{index} {close_call}",
                f"input_{index}: /(?s:.*)/"]
    return [f"fn_{index}: {head} input_{index}",
            f"input_{index}[stop={close_call}]: /(?s:.*)/"]


def custom_sub_grammar(custom: dict, name: str) -> list[dict]:
    """A custom tool's Lark or regex format as llguidance grammars, the first named `name`."""
    from llguidance import LLMatcher  # the grammar texts of llguidance's own converters

    source = (LLMatcher.grammar_from_regex(custom["definition"]) if custom["syntax"] == "regex"
              else LLMatcher.grammar_from_lark(custom["definition"]))
    if not source.lstrip().startswith("{"):
        return [{"name": name, "lark_grammar": source}]
    grammars = json.loads(source)["grammars"]
    grammars[0]["name"] = name
    return grammars


_LIMITS = GrammarLimits()


def check_custom_format(custom: dict, param: str, limits: GrammarLimits = _LIMITS) -> None:
    """A custom tool's format must be a Lark grammar or regex that llguidance takes, within the
    size bound and llguidance's limits: else a 400 naming `param` (`tools[0].format`)."""
    syntax, definition = custom.get("syntax", ""), custom.get("definition", "")
    if syntax in ("", "text"):
        return
    if syntax not in ("lark", "regex"):
        raise InvalidParameter(f"{param}: the grammar syntax must be 'lark' or 'regex', not "
                               f"{syntax!r}", param=param)
    if len(definition.encode()) > limits.max_source_bytes:
        raise InvalidParameter(f"{param}: the {syntax} definition is longer than "
                               f"{limits.max_source_bytes} bytes", param=param)
    from llguidance import LLMatcher, LLParserLimits

    bounds = LLParserLimits(initial_lexer_fuel=limits.initial_lexer_fuel,
                            max_grammar_size=limits.max_grammar_size)
    try:
        error = LLMatcher.validate_grammar(compose('start: @custom\n', custom_sub_grammar(
            custom, "custom")), limits=bounds)
    except (ValueError, TypeError) as exc:
        error = str(exc)
    if error:
        raise InvalidParameter(f"{param}: invalid {syntax} definition: {one_line(error)}",
                               param=param)


def _region_rules(syntax: ToolSyntax, single: bool, special_ids: dict[str, int],
                  opened: bool, self_closing: bool = False) -> list[str]:
    """`start` in the family's markup: one call, or one or more (`opened`: without the first
    call's marker; `self_closing`: each call's rule ends with its close marker)."""
    def repeated(item: str, separator: str) -> str:
        return item if single else f"{item} ({json.dumps(separator)} {item})*"

    if syntax.name == "hermes":
        open_call = _literal("<tool_call>", special_ids)
        close_call = _literal("</tool_call>", special_ids)
        rest = 'call_rest: "\\n" body' + ("" if self_closing else f' "\\n" {close_call}')
        if single:
            return [f"start: {'' if opened else open_call} call_rest", rest]
        return [f"start: {'' if opened else open_call} call_rest "
                f'("\\n" {open_call} call_rest)*', rest]
    if syntax.name == "mistral":
        marker = "" if opened else _literal("[TOOL_CALLS]", special_ids)
        return [f'start: {marker} " [" {repeated("body", ", ")} "]"']
    return [f"start: {repeated('body', '; ')}"]  # llama3_json: bare JSON calls
