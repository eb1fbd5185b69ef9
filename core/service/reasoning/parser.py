"""Streaming reasoning parsing of one choice's output text.

Owns: `ReasoningParser`, which consumes a choice's text deltas and splits them into reasoning
(the think block's text, markers excluded) and answer (everything after the block, which then
goes on to the tool-call parser). A partial marker is held back until the next delta decides it,
so no marker text ever reaches either side. The markers, and the whitespace between the end
marker and the answer, come out as markup: every piece, in the order they come, joined is
exactly the raw output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.service.reasoning.syntax import BlockState, ReasoningSyntax


@dataclass
class ReasoningDelta:
    """What one text delta turned into: its pieces in order, each ("reasoning" | "markup" |
    "answer", text); markup (the markers, the answer's leading whitespace) is in neither side."""

    parts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, kind: str, text: str) -> None:
        if text:
            self.parts.append((kind, text))

    def _joined(self, kind: str) -> str:
        return "".join(text for part_kind, text in self.parts if part_kind == kind)

    @property
    def reasoning(self) -> str:
        return self._joined("reasoning")

    @property
    def answer(self) -> str:
        return self._joined("answer")

    @property
    def raw(self) -> str:
        """Every piece, markup included: the text fed in (less what is held back)."""
        return "".join(text for _, text in self.parts)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper start of `marker`."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


class ReasoningParser:
    def __init__(self, syntax: ReasoningSyntax, state: BlockState):
        self._syntax = syntax
        self.state = state
        self._held = ""  # text that may still turn out to be a marker
        self._after_end = False  # dropping whitespace between the end marker and the answer
        self.opened = state is BlockState.INSIDE  # was there a block at all?

    @property
    def in_reasoning(self) -> bool:
        """Is the output (so far) inside the think block, or about to decide?"""
        return self.state is not BlockState.ANSWER

    def feed(self, text: str) -> ReasoningDelta:
        out, text, self._held = ReasoningDelta(), self._held + text, ""
        start, end = self._syntax.start, self._syntax.end
        while text:
            if self.state is BlockState.MAY_OPEN:
                stripped = text.lstrip()
                if stripped.startswith(start):
                    out.add("markup", text[:len(text) - len(stripped) + len(start)])
                    text, self.state, self.opened = stripped[len(start):], BlockState.INSIDE, True
                elif start.startswith(stripped):  # "" or a partial marker: undecided
                    self._held = text
                    break
                else:
                    self.state = BlockState.ANSWER
            elif self.state is BlockState.INSIDE:
                index = text.find(end)
                if index >= 0:
                    out.add("reasoning", text[:index])
                    out.add("markup", end)
                    text, self.state, self._after_end = (text[index + len(end):],
                                                         BlockState.ANSWER, True)
                    continue
                keep = _partial_suffix(text, end)
                out.add("reasoning", text[:len(text) - keep])
                self._held = text[len(text) - keep:]
                break
            else:
                if self._after_end:
                    stripped = text.lstrip()
                    out.add("markup", text[:len(text) - len(stripped)])
                    text = stripped
                    if not text:
                        break
                    self._after_end = False
                out.add("answer", text)
                break
        return out

    def finish(self) -> ReasoningDelta:
        """The choice ended: what was held back goes out as what it was heading for."""
        held, self._held, out = self._held, "", ReasoningDelta()
        out.add("reasoning" if self.state is BlockState.INSIDE else "answer", held)
        return out
