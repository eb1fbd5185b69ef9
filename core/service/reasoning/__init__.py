"""Reasoning output: the think block of a reasoning model's chat output, parsed in the core.

Owns (in its modules): the reasoning syntaxes and their detection from a chat template
(`syntax`), the per-request plan (where the block stands when the prompt ends, the grammar
prefix that keeps a constraint out of the block, the token budget: `plan`), and the streaming
parser that splits a choice's text into reasoning and answer (`parser`).
"""

from core.service.reasoning.parser import ReasoningDelta, ReasoningParser
from core.service.reasoning.plan import ReasoningPlan, reasoning_plan
from core.service.reasoning.syntax import (
    PARSER_NAMES,
    BlockState,
    ReasoningSyntax,
    select_syntax,
)

__all__ = ["PARSER_NAMES", "BlockState", "ReasoningDelta", "ReasoningParser", "ReasoningPlan",
           "ReasoningSyntax", "reasoning_plan", "select_syntax"]
