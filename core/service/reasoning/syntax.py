"""Reasoning syntaxes: the markers of a think block, and where the block stands as output starts.

Owns: `ReasoningSyntax` (the start and end markers; whether output starts inside the block even
when the prompt does not open it), the parser names of `--reasoning-parser`, detection from the
chat template ("auto"), and `block_state`, which reads the end of the rendered prompt:
- the prompt opens a block and leaves it open (DeepSeek-R1's and Qwen3-Thinking's templates,
  Qwen3's with a thinking prefix): the output starts inside it;
- the prompt closes an empty block at its very end (Qwen3's `enable_thinking: false`): the
  output is the answer;
- otherwise the model may open a block at the start of its output (Qwen3's default), or, for
  DeepSeek-R1, the output starts inside one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from core.config import ConfigError


class BlockState(enum.Enum):
    MAY_OPEN = "may_open"  # the output may start with the start marker
    INSIDE = "inside"  # the output starts inside the block
    ANSWER = "answer"  # no reasoning: the output is the answer


@dataclass(frozen=True)
class ReasoningSyntax:
    name: str
    start: str = "<think>"
    end: str = "</think>"
    starts_inside: bool = False  # the output is reasoning until `end`, opened or not


SYNTAXES = {"qwen3": ReasoningSyntax("qwen3"),
            "deepseek_r1": ReasoningSyntax("deepseek_r1", starts_inside=True)}
PARSER_NAMES = tuple(SYNTAXES)


def select_syntax(name: str, chat_template: str | None) -> ReasoningSyntax | None:
    """The syntax `--reasoning-parser NAME` asks for: "none", "auto" (read off the template: a
    template that writes `</think>` is a think-block model), or one of PARSER_NAMES."""
    if name == "none":
        return None
    if name == "auto":
        return SYNTAXES["qwen3"] if chat_template and "</think>" in chat_template else None
    if name not in SYNTAXES:
        raise ConfigError(f"unknown reasoning parser {name!r}; expected auto, none or one of "
                          f"{', '.join(PARSER_NAMES)}")
    return SYNTAXES[name]


def block_state(syntax: ReasoningSyntax, prompt_tail: str) -> BlockState:
    """Where the think block stands when the output starts, from the rendered prompt's end."""
    start, end = prompt_tail.rfind(syntax.start), prompt_tail.rfind(syntax.end)
    if start > end:
        return BlockState.INSIDE
    if end >= 0 and not prompt_tail[end + len(syntax.end):].strip():
        return BlockState.ANSWER
    return BlockState.INSIDE if syntax.starts_inside else BlockState.MAY_OPEN
