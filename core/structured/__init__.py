"""Grammar-constrained decoding: the constraint type and (in its modules) llguidance matchers.

Owns: `GrammarSpec`, the one boundary type a request carries to constrain a choice's output.
The engine compiles it with llguidance (bounded size and time), keeps one matcher per
constrained choice, and fills the packed token bitmask the sampler applies on device.
"""

from __future__ import annotations

from dataclasses import dataclass

# "grammar": Lark or llama.cpp GBNF (told apart by llguidance's converter); "lark": Lark only
GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "choice", "lark", "grammar", "text",
                 "llguidance")
# "text": any output (with a `reasoning` prefix only: a budget on the think block, nothing after)
# "llguidance": the core's own grammars: Lark text, or llguidance's JSON of named grammars
# (tool calls whose custom tools bring their own input grammars), passed through as it is


@dataclass(frozen=True)
class ReasoningPrefix:
    """A reasoning model's think block before the constrained answer: free text, bounded by
    `max_tokens` (then the end marker is forced), and the constraint applies after it."""

    start: str  # the start marker as a Lark item ("<[id]>" or a string); "": the prompt opened it
    end: str  # the end marker as a Lark item; "": `end_text` ends the block as a stop lexeme
    end_text: str = "</think>"
    optional: bool = False  # the model may skip the block (it has not been opened)
    max_tokens: int | None = None  # the thinking budget (`end` must be a token item)


@dataclass(frozen=True)
class GrammarSpec:
    """A constraint on one choice's output, compiled by llguidance in the core."""

    kind: str  # one of GRAMMAR_KINDS
    # The schema JSON text, the regex, a JSON list of choices, or the grammar text
    # (for "lark": llguidance's Lark-like syntax, which may embed `%json {...}`).
    source: str
    param: str  # the API parameter it came from, named in errors ("response_format", "tools", ...)
    # json_schema only: a keyword llguidance cannot enforce is an error (False: it is ignored)
    strict: bool = True
    # json_schema only: objects without `additionalProperties` stay open (JSON Schema's
    # default); False: they are closed (core/structured/schema.py), the server's default
    open_objects: bool = False
    reasoning: ReasoningPrefix | None = None  # a think block comes first
    # The grammar of tool calls (Lark, or llguidance's JSON of named grammars) the output may be
    # instead of this constraint's answer (tools under tool_choice "auto" with a response
    # format); "": none
    tool_calls: str = ""


__all__ = ["GRAMMAR_KINDS", "GrammarSpec", "ReasoningPrefix"]
