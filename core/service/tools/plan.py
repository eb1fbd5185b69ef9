"""How one chat request uses tools: validation of `tools` / `tool_choice`, and the plan.

Owns: the 400s of tool requests (a tool_choice without tools, a named or allowed function that is
not among them, bad or duplicate tool names, tools for a model whose chat template cannot show
them or whose call syntax is unknown, custom tools' bad formats and custom tools in a family other
than Hermes) and `ToolPlan`: the syntax each choice's output is parsed
in, and the grammar that forces calls for `tool_choice` "required" or a named function (of the
allowed tools only, under `allowed_tools`), and under "auto" the calls grammar that a response
format's answer is composed with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidParameter, Unsupported
from core.service.tools.grammar import (
    auto_calls_grammar,
    auto_tool_grammar,
    check_custom_format,
    tool_call_grammar,
)
from core.service.tools.syntax import ToolSyntax, detect_syntax, syntax_named
from core.structured import GrammarSpec
from tandem.v1 import inference_pb2 as pb

_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MODE = pb.ToolChoice.Mode


@dataclass(frozen=True)
class ToolPlan:
    """What the core does with one request's tools."""

    syntax: ToolSyntax  # each choice's output is parsed for calls in this syntax
    grammar: GrammarSpec | None  # forces calls ("required" / a named function), else None
    keep_special_tokens: bool  # a call marker is a special token: the parser must see it
    # "auto": the Lark grammar of the calls an output constrained by a response format may be
    # instead of the format's answer (`GrammarSpec.tool_calls`); "" otherwise
    calls: str = ""


def tools_shown(chat: pb.ChatInput) -> bool:
    """Does the chat template see the tools? Not with tool_choice "none"."""
    return bool(chat.tools) and chat.tool_choice.mode != _MODE.MODE_NONE


def check_tool_choice(chat: pb.ChatInput) -> None:
    """The request-only checks (no model needed): each failure a 400 naming its param."""
    mode, names = chat.tool_choice.mode, [tool.name for tool in chat.tools]
    for name in names:
        if not _TOOL_NAME.fullmatch(name):
            raise InvalidParameter(f"tool name {name!r} must be 1 to 64 letters, digits, '_' or "
                                   "'-'", param="tools")
    if len(set(names)) != len(names):
        raise InvalidParameter("tool names must be unique", param="tools")
    for index, tool in enumerate(chat.tools):
        if tool.type == "custom":
            check_custom_format(custom_format(tool), f"tools[{index}].format")
    if mode in (_MODE.MODE_AUTO, _MODE.MODE_REQUIRED, _MODE.MODE_FUNCTION) and not names:
        raise InvalidParameter("tool_choice needs tools: give at least one tool",
                               param="tool_choice")
    if mode == _MODE.MODE_FUNCTION and chat.tool_choice.function_name not in names:
        raise InvalidParameter(f"tool_choice names the function "
                               f"{chat.tool_choice.function_name!r}, which is not in tools",
                               param="tool_choice")
    allowed = list(chat.tool_choice.allowed_function_names)
    if allowed and mode not in (_MODE.MODE_AUTO, _MODE.MODE_REQUIRED):
        raise InvalidParameter("allowed tools go with the modes 'auto' and 'required' only",
                               param="tool_choice")
    for name in allowed:
        if name not in names:
            raise InvalidParameter(f"tool_choice allows the function {name!r}, which is not in "
                                   "tools", param="tool_choice")


def custom_format(tool: pb.Tool) -> dict | None:
    """A custom tool's format as the grammar builder takes it (None: a function tool)."""
    if tool.type != "custom":
        return None
    return {"syntax": tool.format_syntax, "definition": tool.format_definition}


def tool_plan(chat: pb.ChatInput, tools: list[dict], chat_template: str | None,
              renders_tools: bool, parser_name: str, special_ids: dict[str, int],
              open_objects: bool = False) -> ToolPlan | None:
    """The plan of a request whose template shows tools (None when it shows none).

    `tools` are the parsed {"name", "parameters", "strict", "custom"} definitions ("custom":
    a custom tool's format, else None); `renders_tools` says
    whether the template in use changes the prompt when given tools; `parser_name` is the core's
    --tool-call-parser ("auto": read off the template); `special_ids` maps the special tokens'
    text to their ids; `open_objects` (the server's --json-open-objects) keeps the arguments'
    objects without `additionalProperties` open."""
    if not tools_shown(chat):
        return None
    if not renders_tools:
        raise Unsupported("this model's chat template does not render tools, so it cannot be "
                          "offered any; send the request without tools (or tool_choice "
                          "'none')", param="tools")
    syntax = detect_syntax(chat_template) if parser_name == "auto" else syntax_named(parser_name)
    if syntax is None:
        raise Unsupported("this model's tool-call syntax is unknown (start the core with "
                          "--tool-call-parser)", param="tools")
    if syntax.name != "hermes" and any(tool.get("custom") is not None for tool in tools):
        raise Unsupported(f"custom tools need the hermes tool-call syntax; this model's is "
                          f"{syntax.name}", param="tools")
    markers = [*syntax.start_markers, "<tool_call>", "</tool_call>"]
    marker_ids = {marker: special_ids[marker] for marker in markers if marker in special_ids}
    mode = chat.tool_choice.mode
    parallel = chat.parallel_tool_calls if chat.HasField("parallel_tool_calls") else True
    allowed = set(chat.tool_choice.allowed_function_names)  # empty: every tool may be called
    callable_tools = [tool for tool in tools if tool["name"] in allowed] if allowed else tools
    source, calls = None, ""
    if mode in (_MODE.MODE_REQUIRED, _MODE.MODE_FUNCTION):
        function_name = chat.tool_choice.function_name if mode == _MODE.MODE_FUNCTION else None
        source = tool_call_grammar(syntax, callable_tools, function_name=function_name,
                                   parallel=parallel, special_ids=marker_ids,
                                   open_objects=open_objects)
    else:
        # "auto": constrain opened calls where some tool is strict or only some may be called
        if allowed or any(tool.get("strict") for tool in tools):
            source = auto_tool_grammar(syntax, callable_tools, parallel=parallel,
                                       special_ids=marker_ids, open_objects=open_objects)
        calls = auto_calls_grammar(syntax, callable_tools, parallel=parallel,
                                   special_ids=marker_ids, open_objects=open_objects)
    grammar = GrammarSpec(kind="llguidance", source=source, param="tools") if source else None
    return ToolPlan(syntax=syntax, grammar=grammar, keep_special_tokens=bool(marker_ids),
                    calls=calls)
