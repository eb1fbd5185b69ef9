"""Incremental detokenizing and stop strings.

Owns: turning one token at a time into text deltas that never end inside a UTF-8 character
(or a multi-token character of byte-level BPE), and holding back the text that could still
become a stop string, so a stop string never leaks into the output (unless asked for).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.tokenizer import Tokenizer

PROMPT_CONTEXT_TOKENS = 5  # prompt tokens decoded with the output so leading spaces come out right
REPLACEMENT_CHAR = "\ufffd"  # what decoding an incomplete UTF-8 sequence produces


@dataclass
class DetokenizerStep:
    text_delta: str  # new text safe to emit
    stop_string: str | None = None  # set when a stop string matched (the request is finished)


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: list[int], *,
                 stop_strings: tuple[str, ...] = (), include_stop_str_in_output: bool = False,
                 skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._token_ids = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = len(self._token_ids)  # tokens before this are already text
        self._skip_special = skip_special_tokens
        self._stop_strings = tuple(s for s in stop_strings if s)
        self._include_stop = include_stop_str_in_output
        self._hold_back_chars = max((len(s) for s in self._stop_strings), default=1) - 1
        self.text = ""  # all output text decoded so far
        self._emitted_chars = 0  # how much of self.text was returned

    def push(self, token_id: int, check_stop: bool = True) -> DetokenizerStep:
        """`check_stop` False: the text so far cannot end in a stop string (min_tokens)."""
        self._token_ids.append(token_id)
        self.text += self._decode_new()
        if self._stop_strings and check_stop:
            search_from = max(0, self._emitted_chars - self._hold_back_chars)
            matches = [(index, -len(stop), stop) for stop in self._stop_strings
                       if (index := self.text.find(stop, search_from)) >= 0]
            if matches:  # the earliest match wins (the longest one at the same place)
                index, _, stop = min(matches)
                end = index + len(stop) if self._include_stop else index
                delta = self.text[self._emitted_chars:end]
                self.text, self._emitted_chars = self.text[:end], end
                return DetokenizerStep(delta, stop_string=stop)
        safe_end = max(self._emitted_chars, len(self.text) - self._hold_back_chars)
        delta = self.text[self._emitted_chars:safe_end]
        self._emitted_chars = safe_end
        return DetokenizerStep(delta)

    def flush(self) -> str:
        """The held-back text, when the request ends for another reason than a stop string:
        including an incomplete character at the end, decoded as U+FFFD."""
        self.text += self._decode_new(final=True)
        delta = self.text[self._emitted_chars:]
        self._emitted_chars = len(self.text)
        return delta

    def _decode_new(self, final: bool = False) -> str:
        decode = self._tokenizer.decode
        prefix = decode(self._token_ids[self._prefix_offset:self._read_offset],
                        skip_special_tokens=self._skip_special)
        full = decode(self._token_ids[self._prefix_offset:], skip_special_tokens=self._skip_special)
        if len(full) <= len(prefix) or (full.endswith(REPLACEMENT_CHAR) and not final):
            return ""  # an incomplete character: wait for the next token
        self._prefix_offset, self._read_offset = self._read_offset, len(self._token_ids)
        return full[len(prefix):]
