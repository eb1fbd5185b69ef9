"""The engine's live matchers: one per constrained choice, the step's bitmask, token acceptance.

Owns: the llguidance matcher of every constrained request the engine is running (created when
the engine takes the request, dropped when it finishes, is aborted or fails), filling the packed
token bitmask of a step's constrained rows with llguidance's parallel fill (it releases the GIL
and runs on llguidance's own threads), and advancing a matcher by each accepted token.

A preempted request keeps its generated tokens and recomputes only their KV, so its matcher,
which has consumed exactly those tokens, stays valid as it is.
"""

from __future__ import annotations

import enum
import time
from collections import deque

import llguidance
import llguidance.numpy
import numpy as np

from core.structured import GrammarSpec
from core.structured.compiler import GrammarCompiler

ALL_ALLOWED = -1  # a bitmask word with every bit set: the row is unconstrained
FILL_TIMES_KEPT = 4096  # recent mask-fill durations kept for benchmarks


class Accepted(enum.Enum):
    """What a matcher says after consuming a token."""

    MORE = "more"  # the grammar needs or allows more tokens
    COMPLETE = "complete"  # the grammar is complete: nothing but EOS could follow
    FAILED = "failed"  # the token was not allowed, or the matcher hit a limit


class GrammarMatchers:
    """Engine-thread state of the constrained requests."""

    def __init__(self, compiler: GrammarCompiler):
        self.compiler = compiler
        self.num_words = -(-compiler.vocab_size // 32)  # int32 words per bitmask row
        self._executor = llguidance.LLExecutor()
        self._matchers: dict[str, llguidance.LLMatcher] = {}
        self.fill_times_s: deque[float] = deque(maxlen=FILL_TIMES_KEPT)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._matchers

    def __len__(self) -> int:
        return len(self._matchers)

    def new_matcher(self, spec: GrammarSpec) -> llguidance.LLMatcher:
        """A matcher for one choice (call it off the engine thread: it may compile)."""
        return self.compiler.new_matcher(spec)

    def add(self, request_id: str, matcher: llguidance.LLMatcher) -> None:
        self._matchers[request_id] = matcher

    def remove(self, request_id: str) -> None:
        self._matchers.pop(request_id, None)

    def fill(self, rows: list[tuple[str, int]], num_rows: int) -> np.ndarray:
        """A [num_rows, num_words] int32 bitmask: for each (request id, row), that request's
        allowed next tokens; every other row allows everything."""
        started = time.perf_counter()
        bitmask = np.full((num_rows, self.num_words), ALL_ALLOWED, np.int32)
        llguidance.numpy.fill_next_token_bitmask_par(
            self._executor, [(self._matchers[request_id], row) for request_id, row in rows],
            bitmask)
        self.fill_times_s.append(time.perf_counter() - started)
        return bitmask

    def accept(self, request_id: str, token_id: int) -> Accepted:
        matcher = self._matchers[request_id]
        if not matcher.consume_token(token_id):
            return Accepted.FAILED
        return Accepted.COMPLETE if matcher.is_stopped() else Accepted.MORE

    def forced_tokens(self, request_id: str) -> list[int]:
        """The tokens the grammar forces next (llguidance's fast-forward tokens, canonically
        tokenized; not consumed): [] when it allows a choice."""
        return self._matchers[request_id].compute_ff_tokens()

    def error(self, request_id: str) -> str:
        """Why a matcher failed (its own message, or the token it refused)."""
        return self._matchers[request_id].get_error() or "the token is not allowed"


def clear_unless_empty(bitmask_row: np.ndarray, token_ids: tuple[int, ...]) -> None:
    """Clear `token_ids` in one packed int32 bitmask row [words], in place, unless that would
    leave no token allowed."""
    cleared = bitmask_row.view(np.uint32).copy()
    for token_id in token_ids:
        cleared[token_id // 32] &= ~np.uint32(1 << (token_id % 32))
    if cleared.any():
        bitmask_row[:] = cleared.view(np.int32)
