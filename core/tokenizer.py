"""The model's tokenizer and chat template, through transformers' `AutoTokenizer`.

Owns: text → token ids, chat messages → prompt token ids (the model's own Jinja template),
token ids → text, and the special-token ids. Everything reads local files only.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import InvalidParameter

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from the core
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@dataclass
class ChatPrompt:
    """Chat input in the shape chat templates expect."""

    messages: list[dict]  # {"role", "content", optional "name", "tool_call_id", "tool_calls"}
    tools: list[dict] | None = None  # OpenAI-style tool definitions
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict = field(default_factory=dict)  # extra template variables
    chat_template: str | None = None  # overrides the model's template


class Tokenizer:
    def __init__(self, model_dir: Path):
        from transformers import AutoTokenizer  # heavy import, only where a model is served
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # length checks are ours, not its warnings

        self.model_dir = Path(model_dir)  # where its files are (GetTokenizer streams them)
        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.special_ids = frozenset(self._tokenizer.all_special_ids)
        self.vocab_size = len(self._tokenizer)
        decoder = getattr(getattr(self._tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._pieces: dict[int, tuple[str, bytes]] = {}  # token id → (text, bytes), memoized
        # the longest token's length in characters (≥ its decoded length): bounds prompt text
        self.max_token_chars = max(len(token) for token in self._tokenizer.get_vocab())
        self._renders_tools: dict[str | None, bool] = {}  # chat template → shows tools?

    @property
    def hf_tokenizer(self):
        """The underlying transformers tokenizer (llguidance builds its own from it)."""
        return self._tokenizer

    @property
    def chat_template(self) -> str | None:
        """The model's own Jinja chat template (None: it has none)."""
        template = self._tokenizer.chat_template
        return template if isinstance(template, str) else None

    @property
    def special_ids_by_text(self) -> dict[str, int]:
        """Special (and added control) tokens' text → id."""
        return {str(token): token_id for token, token_id in zip(
            self._tokenizer.all_special_tokens, self._tokenizer.all_special_ids, strict=True)}

    @functools.cached_property
    def added_ids_by_text(self) -> dict[str, int]:
        """Every added token's text → id, special or not (Qwen's `<think>`, `<tool_call>`):
        llguidance matches these as tokens, never as their text."""
        added = {str(token.content): token_id
                 for token_id, token in self._tokenizer.added_tokens_decoder.items()}
        return {**added, **self.special_ids_by_text}

    def renders_tools(self, chat_template: str | None = None) -> bool:
        """Does the template (default: the model's) show tools? A probe conversation is rendered
        with and without one tool; the same text means the template drops them. Memoized."""
        known = self._renders_tools.get(chat_template)
        if known is None:
            probe = ChatPrompt(messages=[{"role": "user", "content": "hi"}],
                               chat_template=chat_template)
            tool = {"type": "function", "function": {
                "name": "probe_tool", "description": "probe", "parameters": {"type": "object"}}}
            try:
                with_tools = self._render(ChatPrompt(**{**probe.__dict__, "tools": [tool]}))
                known = with_tools != self._render(probe)
            except InvalidParameter:
                known = False
            self._renders_tools[chat_template] = known
        return known

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [str(t) for t in self._tokenizer.convert_ids_to_tokens(token_ids)]

    def token_piece(self, token_id: int) -> tuple[str, bytes]:
        """One token's (text, exact bytes), as logprobs report it."""
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._token_piece(token_id)
        return piece

    def _token_piece(self, token_id: int) -> tuple[str, bytes]:
        raw = self._tokenizer.convert_ids_to_tokens(token_id)
        if raw is None:  # an id of the model's padded vocabulary that the tokenizer lacks
            return "", b""
        if token_id in self.special_ids:
            data = raw.encode()
        elif self._byte_level and all(char in _BYTE_DECODER for char in raw):
            data = bytes(_BYTE_DECODER[char] for char in raw)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", raw):  # sentencepiece byte fallback
            data = bytes([int(raw[3:5], 16)])
        else:
            data = raw.replace("\u2581", " ").encode()  # sentencepiece's word-start mark
        return data.decode("utf-8", errors="replace"), data

    def apply_chat_template(self, chat: ChatPrompt) -> list[int]:
        if not chat.messages:
            raise InvalidParameter("messages must not be empty", param="messages")
        if chat.add_generation_prompt and chat.continue_final_message:
            raise InvalidParameter("add_generation_prompt and continue_final_message are "
                                   "mutually exclusive", param="continue_final_message")
        if self._tokenizer.chat_template is None and chat.chat_template is None:
            raise InvalidParameter("this model has no chat template; use completions",
                                   param="messages")
        return self.encode(self._render(chat), add_special_tokens=False)

    def _render(self, chat: ChatPrompt) -> str:
        try:
            return self._tokenizer.apply_chat_template(
                chat.messages, tools=chat.tools, tokenize=False,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message,
                chat_template=chat.chat_template, **chat.template_kwargs)
        except Exception as exc:  # the template raised on this conversation (e.g. role order)
            raise InvalidParameter(f"chat template failed: {exc}", param="messages") from exc


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable character → byte table (the inverse of its encoder)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


_BYTE_DECODER = _byte_decoder()


def parse_json_object(raw: str, param: str) -> dict:
    """A JSON-encoded object field of the contract (empty string = {})."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidParameter(f"{param} is not valid JSON: {exc}", param=param) from exc
    except RecursionError:
        raise InvalidParameter(f"{param} nests too deeply", param=param) from None
    if not isinstance(value, dict):
        raise InvalidParameter(f"{param} must be a JSON object", param=param)
    return value
