"""The model's tokenizer and chat template, through transformers' `AutoTokenizer`.

Owns: text → token ids, chat messages → prompt token ids (the model's own Jinja template),
token ids → text, and the special-token ids. Everything reads local files only.
"""

from __future__ import annotations

import json
import os
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

        self._tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.special_ids = frozenset(self._tokenizer.all_special_ids)
        self.vocab_size = len(self._tokenizer)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [str(t) for t in self._tokenizer.convert_ids_to_tokens(token_ids)]

    def apply_chat_template(self, chat: ChatPrompt) -> list[int]:
        if not chat.messages:
            raise InvalidParameter("messages must not be empty", param="messages")
        if chat.add_generation_prompt and chat.continue_final_message:
            raise InvalidParameter("add_generation_prompt and continue_final_message are "
                                   "mutually exclusive", param="continue_final_message")
        if self._tokenizer.chat_template is None and chat.chat_template is None:
            raise InvalidParameter("this model has no chat template; use completions",
                                   param="messages")
        try:
            text = self._tokenizer.apply_chat_template(
                chat.messages, tools=chat.tools, tokenize=False,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message,
                chat_template=chat.chat_template, **chat.template_kwargs)
        except Exception as exc:  # the template raised on this conversation (e.g. role order)
            raise InvalidParameter(f"chat template failed: {exc}", param="messages") from exc
        return self.encode(text, add_special_tokens=False)


def parse_json_object(raw: str, param: str) -> dict:
    """A JSON-encoded object field of the contract (empty string = {})."""
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidParameter(f"{param} is not valid JSON: {exc}", param=param) from exc
    if not isinstance(value, dict):
        raise InvalidParameter(f"{param} must be a JSON object", param=param)
    return value
