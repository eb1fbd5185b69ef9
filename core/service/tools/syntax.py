"""Tool-call syntaxes of the model families Tandem serves, and picking one for a chat template.

Owns: `ToolSyntax` (how one family writes a call: the markup that opens a call region, how calls
inside it are separated and closed, and which key holds the arguments) and `detect_syntax`, which
reads the family off the chat template text. The `--tool-call-parser` flag overrides it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolSyntax:
    """How one model family writes tool calls in its output."""

    name: str  # the parser's name (the --tool-call-parser value)
    start_markers: tuple[str, ...]  # text that opens a call region ("" : none)
    arguments_key: str  # the call object's key holding the arguments
    open_text: str = ""  # between the marker and the first call object ("[" for a list)
    separator: str = ""  # between two call objects of one region ("," / ";"); "" = one per region
    close_text: str = ""  # closes the region ("</tool_call>", "]")
    bare_object_start: bool = False  # a `{` as the output's first non-space character opens a call


HERMES = ToolSyntax(name="hermes", start_markers=("<tool_call>",), arguments_key="arguments",
                    close_text="</tool_call>")
LLAMA3_JSON = ToolSyntax(name="llama3_json", start_markers=("<|python_tag|>",),
                         arguments_key="parameters", separator=";", bare_object_start=True)
MISTRAL = ToolSyntax(name="mistral", start_markers=("[TOOL_CALLS]",), arguments_key="arguments",
                     open_text="[", separator=",", close_text="]")

SYNTAXES = {syntax.name: syntax for syntax in (HERMES, LLAMA3_JSON, MISTRAL)}
PARSER_NAMES = tuple(SYNTAXES)  # the values --tool-call-parser accepts (besides "auto")


def detect_syntax(chat_template: str | None) -> ToolSyntax | None:
    """The family a chat template writes tool calls in (None: it shows no known call syntax)."""
    template = chat_template or ""
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or "ipython" in template:
        return LLAMA3_JSON
    return None


def syntax_named(name: str) -> ToolSyntax:
    """The syntax of a --tool-call-parser value (ValueError for an unknown one)."""
    if name not in SYNTAXES:
        raise ValueError(f"unknown tool-call parser {name!r}; expected one of "
                         f"{', '.join(PARSER_NAMES)} or auto")
    return SYNTAXES[name]
