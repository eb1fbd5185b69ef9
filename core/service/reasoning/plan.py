"""A chat request's reasoning plan: where its think block stands, and what keeps it apart.

Owns: `reasoning_plan`, which reads the end of the rendered prompt (`block_state`), checks the
thinking budget, and gives each choice's grammar the think-block prefix when the choice is
constrained (a response format, a forced tool call) or has a budget: the block is free text up
to its end marker, forced when the budget is spent, and the constraint applies after it, so
constrained JSON never lands in the reasoning and reasoning never in the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from core.engine.request import Request
from core.errors import InvalidParameter
from core.service.reasoning.syntax import BlockState, ReasoningSyntax, block_state
from core.structured import GrammarSpec, ReasoningPrefix
from core.tokenizer import Tokenizer

PROMPT_TAIL_TOKENS = 32  # the rendered prompt's end that decides where the block stands
MAX_THINKING_BUDGET = 1 << 20


@dataclass(frozen=True)
class ReasoningPlan:
    syntax: ReasoningSyntax
    state: BlockState  # where the block stands as the output starts


def _marker_item(text: str, tokenizer: Tokenizer) -> str:
    """The marker as a Lark item: its token when it is one added token (llguidance matches an
    added token as that token, never as its text), else the text."""
    token_id = tokenizer.added_ids_by_text.get(text)
    return f"<[{token_id}]>" if token_id is not None else json.dumps(text)


def reasoning_plan(syntax: ReasoningSyntax | None, tokenizer: Tokenizer, prompt_ids: list[int],
                   requests: list[Request], budget_tokens: int | None) -> ReasoningPlan | None:
    """The plan of a chat request on a reasoning model (None: no reasoning to parse); gives
    the choices' grammars their think-block prefix."""
    if syntax is None:
        if budget_tokens is not None:
            raise InvalidParameter("thinking_token_budget needs a reasoning model",
                                   param="thinking_token_budget")
        return None
    tail = tokenizer.decode(prompt_ids[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
    state = block_state(syntax, tail)
    if state is BlockState.ANSWER:
        return ReasoningPlan(syntax, state)  # thinking is off: a budget has nothing to bound
    if budget_tokens is not None and not 0 <= budget_tokens <= MAX_THINKING_BUDGET:
        raise InvalidParameter(f"thinking_token_budget must be in [0, {MAX_THINKING_BUDGET}]",
                               param="thinking_token_budget")
    end = _marker_item(syntax.end, tokenizer)
    if budget_tokens is not None and not end.startswith("<["):
        raise InvalidParameter(f"thinking_token_budget needs {syntax.end!r} to be one token of "
                               "this model's tokenizer", param="thinking_token_budget")
    prefix = ReasoningPrefix(
        start=_marker_item(syntax.start, tokenizer) if state is BlockState.MAY_OPEN else "",
        end=end if end.startswith("<[") else "", end_text=syntax.end,
        optional=state is BlockState.MAY_OPEN, max_tokens=budget_tokens)
    for request in requests:
        if request.grammar is not None:
            request.grammar = replace(request.grammar, reasoning=prefix)
        elif budget_tokens is not None:
            request.grammar = GrammarSpec("text", "", "thinking_token_budget", reasoning=prefix)
    return ReasoningPlan(syntax, state)
