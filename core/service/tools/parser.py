"""Streaming tool-call parsing of one choice's output text.

Owns: `ToolCallParser`, which consumes a choice's text deltas and yields content text and
tool-call deltas in the model family's syntax (core/service/tools/syntax.py). Content before a call
streams as content; a call's markup never leaks (a partial marker is held back until the next
delta decides it); a call's first delta carries its index, a fresh `call_…` id and the function
name; later deltas carry fragments of the arguments that, joined, are exactly the arguments JSON
the model wrote. Text that opens a call region but turns out not to be one goes out as content.
A region the choice ends in (max_tokens cut it, or the model stopped) is never content: a call
whose name was written is announced, the rest is dropped (only a bare `{` that shows no call,
under llama3_json, is content, unless calls were forced: it may be a JSON answer).

A custom tool's call (core/service/tools/grammar.py) is its name as a call object, a newline
and raw input up to the close marker (one newline before it dropped): its first delta says
type "custom", its later deltas carry fragments of the input (in `arguments`).
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import dataclass, field

from core.service.tools.syntax import ToolSyntax

_WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call."""

    index: int  # the call's position among this choice's calls
    id: str = ""  # "call_…": on the call's first delta only
    name: str = ""  # the function name: on the call's first delta only
    arguments: str = ""  # a fragment of the arguments JSON (a custom tool's: of its input)
    type: str = ""  # "function" or "custom": on the call's first delta only


@dataclass
class ParsedDelta:
    """What one text delta turned into."""

    content: str = ""  # text for the client's `content`
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


class _State(enum.Enum):
    CONTENT = "content"  # ordinary text: looking for a start marker
    OPEN = "open"  # after a marker: expecting open_text, then a call object
    OBJECT_START = "object_start"  # expecting the `{` of a call object
    OBJECT = "object"  # inside a call object
    AFTER_OBJECT = "after_object"  # expecting a separator or the region's close_text
    RAW = "raw"  # a custom tool's input: raw text up to the close marker


class _CallObject:
    """Scans one call object (`{"name": ..., "<arguments_key>": {...}}`) a character at a time,
    recording where the top-level values start and end in `text`."""

    def __init__(self, arguments_key: str):
        self.arguments_key = arguments_key
        self.text = ""
        self.depth = 0
        self.in_string = self.escape = False
        self.expect_key = False
        self.key_start = -1  # start of the top-level key string being read
        self.key: str | None = None  # the top-level key whose value comes next / is being read
        self.value_start = -1  # start of the current top-level value
        self.values: dict[str, tuple[int, int]] = {}  # key → (start, end) of its value
        self.done = False

    def feed(self, char: str) -> None:
        index = len(self.text)
        self.text += char
        if self.in_string:
            if self.escape:
                self.escape = False
            elif char == "\\":
                self.escape = True
            elif char == '"':
                self.in_string = False
                self._string_closed(index)
            return
        if char == '"':
            self.in_string = True
            if self.depth == 1 and self.expect_key:
                self.key_start, self.expect_key = index, False
            elif self.depth == 1 and self.key is not None and self.value_start < 0:
                self.value_start = index
            return
        if char in _WHITESPACE:
            return
        if char in "{[":
            if self.depth == 1 and self.key is not None and self.value_start < 0:
                self.value_start = index
            self.depth += 1
            if self.depth == 1:
                self.expect_key = True
        elif char in "}]":
            self.depth -= 1
            if self.depth == 1 and self.value_start >= 0:
                self._value_closed(index + 1)
            elif self.depth == 0:
                self._primitive_closed(index)
                self.done = True
        elif self.depth == 1 and char == ",":
            self._primitive_closed(index)
            self.expect_key = True
        elif self.depth == 1 and char != ":" and self.key is not None and self.value_start < 0:
            self.value_start = index  # a number, true, false or null

    def _string_closed(self, index: int) -> None:
        if self.depth != 1:
            return
        if self.key_start >= 0:
            try:
                self.key = json.loads(self.text[self.key_start:index + 1])
            except json.JSONDecodeError:
                self.key = ""
            self.key_start, self.value_start = -1, -1
        elif self.value_start >= 0:
            self._value_closed(index + 1)

    def _primitive_closed(self, index: int) -> None:
        if self.key is not None and self.value_start >= 0:
            self._value_closed(len(self.text[:index].rstrip()))

    def _value_closed(self, end: int) -> None:
        if self.key is not None:
            self.values[self.key] = (self.value_start, end)
        self.key, self.value_start = None, -1

    def value(self, key: str):
        """The decoded top-level value of `key`, or None while it is absent or incomplete."""
        if key not in self.values:
            return None
        start, end = self.values[key]
        try:
            return json.loads(self.text[start:end])
        except json.JSONDecodeError:
            return None

    def arguments_span(self) -> tuple[int, int] | None:
        """(start, end so far) of an arguments object being written, or its final span."""
        if self.arguments_key in self.values:
            start, end = self.values[self.arguments_key]
        elif self.key == self.arguments_key and self.value_start >= 0:
            start, end = self.value_start, len(self.text)
        else:
            return None
        return (start, end) if self.text[start] == "{" else None


class ToolCallParser:
    """One choice's streaming tool-call parser (see the module docstring)."""

    def __init__(self, syntax: ToolSyntax, forced: bool = False,
                 custom_names: frozenset[str] = frozenset()):
        self.syntax = syntax
        self.forced = forced  # the output is calls (tool_choice "required" or a function)
        self.custom_names = custom_names  # the custom tools: their calls' input is raw text
        self._raw_started = False  # the custom call's header newline was read
        self.num_calls = 0  # calls started so far
        self._state = _State.CONTENT
        self._pending = ""  # text not yet decided (a possible marker, whitespace, a region)
        self._region_raw = ""  # the current region's text, given back as content if it fails
        self._call: _CallObject | None = None
        self._call_announced = False  # the current call's first delta (id, name) went out
        self._arguments_sent = 0  # characters of the current call's arguments sent
        self._content_seen = False  # some non-space content went out
        self._region_marker = ""  # the marker that opened the current region ("": a bare `{`)

    @property
    def made_calls(self) -> bool:
        return self.num_calls > 0

    def feed(self, text: str) -> ParsedDelta:
        """Parse the next text delta of the choice."""
        out = ParsedDelta()
        self._pending += text
        while self._pending:
            before = (self._state, len(self._pending))
            self._step(out)
            if (self._state, len(self._pending)) == before:
                break  # waiting for more text
        return out

    def finish(self, cut: bool = False) -> ParsedDelta:
        """The choice ended (`cut`: by max_tokens or an abort, not by the model): give out what
        was held back. A held-back partial marker is content unless the choice was cut. An
        unfinished region is markup: its call is announced once its name is known, else it is
        dropped; only a bare `{` (no marker, no call before it, calls not forced) without a
        name is content."""
        out = ParsedDelta()
        if self._state == _State.RAW:
            pending = self._pending if self._raw_started else self._pending.removeprefix("\n")
            if cut:  # a close marker begun: markup
                pending = pending[:len(pending) - _partial_marker(pending, self._raw_closes())]
            self._raw_input(out, pending)
        elif self._state == _State.CONTENT:
            pending = self._pending
            partial = _partial_marker(pending, self.syntax.start_markers)
            if cut and partial:
                pending = pending[:len(pending) - partial].rstrip(_WHITESPACE)
            if pending.strip() or not self.made_calls:
                self._emit_content(out, pending)
        elif not self._call_announced and self._state != _State.AFTER_OBJECT:
            name = self._call.value("name") if self._call is not None else None
            if isinstance(name, str) and name:
                out.tool_calls.append(ToolCallDelta(index=self.num_calls, id=_call_id(),
                                                    name=name))
                self.num_calls += 1
            elif not (self._region_marker or self.made_calls or self.forced):
                self._emit_content(out, self._region_raw + self._pending)
        self._pending = ""
        return out

    # -- the state machine -----------------------------------------------------------------

    def _step(self, out: ParsedDelta) -> None:
        if self._state == _State.CONTENT:
            self._scan_content(out)
        elif self._state == _State.OPEN:
            self._expect_text(out, self.syntax.open_text, _State.OBJECT_START)
        elif self._state == _State.OBJECT_START:
            self._expect_text(out, "{", _State.OBJECT, keep=True)
        elif self._state == _State.OBJECT:
            self._scan_object(out)
        elif self._state == _State.RAW:
            self._scan_raw(out)
        else:
            self._scan_after_object(out)

    def _scan_content(self, out: ParsedDelta) -> None:
        text = self._pending
        if self.syntax.bare_object_start and not self._content_seen and not self.made_calls:
            stripped = text.lstrip(_WHITESPACE)
            if not stripped:
                return  # only whitespace so far: wait
            if stripped[0] == "{":
                self._open_region("", stripped, _State.OBJECT_START)  # a bare call?
                return
            self._content_seen = True  # ordinary text: no bare call from here on
        found = [(text.find(marker), marker) for marker in self.syntax.start_markers]
        found = [(index, marker) for index, marker in found if index >= 0]
        if found:
            index, marker = min(found)
            self._emit_content(out, text[:index].rstrip(_WHITESPACE))
            self._open_region(marker, text[index + len(marker):], _State.OPEN)
            return
        keep = _held_tail(text, self.syntax.start_markers)
        self._emit_content(out, text[:len(text) - keep])
        self._pending = text[len(text) - keep:]

    def _open_region(self, marker: str, rest: str, state: _State) -> None:
        self._region_raw, self._pending, self._state = marker, rest, state
        self._region_marker = marker

    def _expect_text(self, out: ParsedDelta, expected: str, next_state: _State,
                     keep: bool = False) -> None:
        """Skip whitespace, then `expected` must follow; else the region is not a call."""
        stripped = self._pending.lstrip(_WHITESPACE)
        skipped = self._pending[:len(self._pending) - len(stripped)]
        if not expected:
            self._state = next_state
            return
        if len(stripped) < len(expected):
            if not expected.startswith(stripped):
                self._give_up(out)
            return
        if not stripped.startswith(expected):
            self._give_up(out)
            return
        consumed = skipped + ("" if keep else expected)
        self._region_raw += consumed
        self._pending = self._pending[len(consumed):]
        if next_state == _State.OBJECT:
            self._call = _CallObject(self.syntax.arguments_key)
            self._call_announced, self._arguments_sent = False, 0
        self._state = next_state

    def _scan_object(self, out: ParsedDelta) -> None:
        call = self._call
        consumed = 0
        for char in self._pending:
            call.feed(char)
            consumed += 1
            if call.done:
                break
        self._region_raw += self._pending[:consumed]
        self._pending = self._pending[consumed:]
        if call.done and self._custom_call(call):
            out.tool_calls.append(ToolCallDelta(index=self.num_calls, id=_call_id(),
                                                name=call.value("name"), type="custom"))
            self.num_calls += 1
            self._call_announced, self._raw_started = True, False
            self._state = _State.RAW
            return
        self._announce_and_stream(out, call)
        if call.done:
            if not self._call_announced:  # an object that is not a call
                self._give_up(out)
                return
            self._state = _State.AFTER_OBJECT

    def _custom_call(self, call: _CallObject) -> bool:
        """Is this finished call object a custom tool's header (a name, no arguments)?"""
        return (not self._call_announced and call.value("name") in self.custom_names
                and self.syntax.arguments_key not in call.values)

    def _raw_closes(self) -> tuple[str, ...]:
        close = self.syntax.close_text
        return ("\n" + close, close)

    def _raw_input(self, out: ParsedDelta, text: str) -> None:
        if text:
            out.tool_calls.append(ToolCallDelta(index=self.num_calls - 1, arguments=text))

    def _scan_raw(self, out: ParsedDelta) -> None:
        """A custom call's input: after the header's newline, text up to the close marker."""
        text = self._pending
        if not self._raw_started:
            if not text:
                return
            text, self._raw_started = text.removeprefix("\n"), True
        close = self.syntax.close_text
        index = text.find(close)
        if index >= 0:
            self._raw_input(out, text[:index].removesuffix("\n"))
            self._pending = text[index + len(close):].lstrip(_WHITESPACE)
            self._region_raw, self._state, self._call = "", _State.CONTENT, None
            return
        keep = _partial_marker(text, self._raw_closes())
        self._raw_input(out, text[:len(text) - keep])
        self._pending = text[len(text) - keep:]

    def _announce_and_stream(self, out: ParsedDelta, call: _CallObject) -> None:
        if not self._call_announced:
            name = call.value("name")
            span = call.arguments_span()
            ready = isinstance(name, str) and name and (span is not None or call.done)
            if not ready:
                return
            out.tool_calls.append(ToolCallDelta(index=self.num_calls, id=_call_id(), name=name))
            self._call_announced = True
            self.num_calls += 1
        span = call.arguments_span()
        if span is not None:
            start, end = span
            fragment = call.text[start + self._arguments_sent:end]
            if fragment:
                self._arguments_sent += len(fragment)
                out.tool_calls.append(ToolCallDelta(index=self.num_calls - 1,
                                                    arguments=fragment))
        elif call.done and self._arguments_sent == 0:
            arguments = call.value(self.syntax.arguments_key)
            text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
            self._arguments_sent = len(text)
            out.tool_calls.append(ToolCallDelta(index=self.num_calls - 1, arguments=text))

    def _scan_after_object(self, out: ParsedDelta) -> None:
        stripped = self._pending.lstrip(_WHITESPACE)
        if not stripped:
            return
        separator, close = self.syntax.separator, self.syntax.close_text
        if separator and stripped.startswith(separator):
            self._pending = stripped[len(separator):]
            self._region_raw, self._state = "", _State.OBJECT_START
        elif close and stripped.startswith(close):
            self._pending = stripped[len(close):].lstrip(_WHITESPACE)
            self._region_raw, self._state = "", _State.CONTENT
        elif close and close.startswith(stripped):
            return  # a partial close: wait
        else:
            self._region_raw, self._state = "", _State.CONTENT  # the rest is content

    def _give_up(self, out: ParsedDelta) -> None:
        """The region is not a call after all: its text is content."""
        self._emit_content(out, self._region_raw + self._pending)
        self._region_raw, self._pending, self._state = "", "", _State.CONTENT
        self._call = None

    def _emit_content(self, out: ParsedDelta, text: str) -> None:
        if text:
            out.content += text
            self._content_seen = self._content_seen or bool(text.strip(_WHITESPACE))


def _partial_marker(text: str, markers: tuple[str, ...]) -> int:
    """The length of the longest end of `text` that begins a marker (0: none)."""
    longest = 0
    for marker in markers:
        for length in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:length]):
                longest = length
                break
    return longest


def _held_tail(text: str, markers: tuple[str, ...]) -> int:
    """How many trailing characters to hold: a possible marker prefix and the whitespace
    before it (whitespace right before a call is dropped)."""
    keep = 0
    for marker in markers:
        for length in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:length]):
                keep = max(keep, length)
                break
    head = text[:len(text) - keep]
    return keep + (len(head) - len(head.rstrip(_WHITESPACE)))


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]
