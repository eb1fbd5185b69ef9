"""The request-field policy: which OpenAI / vLLM fields Tandem honours, ignores or refuses.

Every request field falls into one of three kinds:

- honoured: passed to the core (sampling incl. penalties, `logit_bias`, `min_tokens`,
  `bad_words`, `allowed_token_ids`, `prompt_logprobs`; stopping, logprobs, tools,
  chat-template options, `response_format`, `structured_outputs` / `guided_*`...). Features
  the core cannot do (image/audio content, a schema or grammar it cannot compile) are refused
  by the core itself (INVALID_ARGUMENT + UNSUPPORTED → 400 `unsupported_parameter`), so that
  there is one source of truth for what a model can do.
- accepted but ignored: cannot change the generated text (`user`, `store`, `metadata`, ...),
  and unknown fields. The names a request set are listed, sorted, in the response header
  `x-tandem-ignored-params` — never dropped silently.
- refused: would change the output and has no way to reach the core (`audio`, `prediction`,
  `web_search_options`, beam search, `structural_tag`, ...): 400 `unsupported_parameter` naming
  the field — unless the value is neutral (null, false, empty, 1.0 for `length_penalty`).

This module owns the tables, `apply_field_policy` (the routes set the header) and
`apply_priority_header`: a request's scheduling priority may also come as the
`x-tandem-priority` header (a gateway can set it without touching the body); the header wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel

from facade.errors import invalid_request, unsupported
from tandem.limits import MAX_PRIORITY, MIN_PRIORITY

# Response header listing the ignored fields a request set ("store, user").
IGNORED_PARAMS_HEADER = "x-tandem-ignored-params"

# Fields that never change the generated text; accepted and reported in the header.
IGNORED_FIELDS: frozenset[str] = frozenset({
    # OpenAI
    "user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier",
    "verbosity", "reasoning_effort", "modalities",
    # vLLM
    "request_id", "spaces_between_special_tokens", "kv_transfer_params",
    "mm_processor_kwargs", "vllm_xargs", "return_token_ids", "guided_decoding_backend",
})  # fmt: skip


def _is_null(value: Any) -> bool:
    return value is None


def _is_falsy(value: Any) -> bool:
    return not value


def _is_text_only(value: Any) -> bool:
    return value is None or value == ["text"]


# Fields that would change the output and cannot be honoured; each with "is this value
# neutral?" (a neutral value is honoured trivially and lands in the ignored header).
_REFUSED_COMMON: dict[str, Callable[[Any], bool]] = {
    "use_beam_search": _is_falsy,
    "length_penalty": lambda value: value is None or value == 1,
    "truncate_prompt_tokens": _is_null,
    "guided_whitespace_pattern": _is_null,
    "structural_tag": _is_null,
    "logits_processors": _is_falsy,
    "return_tokens_as_token_ids": _is_falsy,
}
_REFUSED_CHAT: dict[str, Callable[[Any], bool]] = {
    **_REFUSED_COMMON,
    "audio": _is_null,
    "prediction": _is_null,
    "web_search_options": _is_null,
    "modalities": _is_text_only,
    "echo": _is_falsy,  # vLLM chat echo of the last message
    "documents": _is_falsy,  # vLLM: documents for RAG chat templates
    "best_of": lambda value: value is None or value == 1,
}
_REFUSED_COMPLETIONS: dict[str, Callable[[Any], bool]] = {
    **_REFUSED_COMMON,
    "suffix": _is_falsy,  # fill-in-the-middle
}
# /v1/embeddings and /v1/score: vLLM's prompt truncation would change the result.
_REFUSED_POOLING: dict[str, Callable[[Any], bool]] = {
    "truncate_prompt_tokens": _is_null,
}
# rerank and /score: fields of Cohere's and vLLM's that would change the scores.
_REFUSED_RERANK: dict[str, Callable[[Any], bool]] = {
    **_REFUSED_POOLING,
    "max_tokens_per_doc": _is_null,  # Cohere v2: pairs are cut to the model's length instead
    "rank_fields": _is_null,  # Cohere v1: documents are texts or {"text": ...}
    "max_chunks_per_doc": _is_null,  # Cohere v1
}
# /v1/responses: the chat table (it runs through the chat pipeline) plus its own fields.
_REFUSED_RESPONSES: dict[str, Callable[[Any], bool]] = {
    **_REFUSED_CHAT,
    "truncation": lambda value: value is None or value == "disabled",
    "response_format": _is_null,  # Responses' own field is text.format
    "n": lambda value: value is None or value == 1,
    "background": _is_falsy,
    "conversation": _is_null,
    "prompt": _is_null,
    "max_tool_calls": _is_null,
    "top_logprobs": _is_falsy,
}
# The refused table of each kind of request.
_REFUSED_BY_KIND: dict[str, dict[str, Callable[[Any], bool]]] = {
    "chat": _REFUSED_CHAT,
    "completions": _REFUSED_COMPLETIONS,
    "embeddings": _REFUSED_POOLING,
    "score": _REFUSED_POOLING,
    "rerank": _REFUSED_RERANK,
    "responses": _REFUSED_RESPONSES,
    "tokenize": {},
}
# /v1/responses honours `metadata` and `store` (kept with the response) and ignores
# `reasoning` (no reasoning models) and `include` (nothing extra to include).
_IGNORED_BY_KIND: dict[str, frozenset[str]] = {
    "responses": (IGNORED_FIELDS - {"metadata", "store"}) | {"reasoning", "include"},
}

_WHY = {
    "audio": "audio output is not supported by this text-only server.",
    "modalities": "only the 'text' modality is supported.",
    "suffix": "suffix (fill-in-the-middle) is not supported.",
    "truncation": "only truncation 'disabled' is supported: an input over the context is a 400.",
    "response_format": "use text.format on /v1/responses.",
    "background": "background responses are not supported.",
    "max_tokens_per_doc": "each (query, document) pair is cut to the model's length; leave it "
    "unset.",
}


def _refused_message(name: str) -> str:
    return _WHY.get(name, f"'{name}' is not supported by Tandem; leave it unset.")


def apply_field_policy(request: BaseModel, kind: str) -> list[str]:
    """Refuse a field that cannot be honoured (400); return the sorted ignored fields set.

    `kind` is "chat", "completions", "embeddings", "score", "rerank", "responses" or
    "tokenize". A field
    counts as set when the client sent it with a non-null value; unknown fields (in neither
    OpenAI's nor vLLM's API) count as ignored.
    """
    refused = _REFUSED_BY_KIND[kind]
    ignored_fields = _IGNORED_BY_KIND.get(kind, IGNORED_FIELDS)
    extra = request.model_extra or {}
    declared = type(request).model_fields
    ignored = []
    for name in sorted(set(request.model_fields_set) | set(extra)):
        value = extra[name] if name in extra else getattr(request, name, None)
        if value is None:
            continue
        if name in refused:
            if not refused[name](value):
                raise unsupported(name, _refused_message(name))
            if name in ignored_fields or name not in declared:
                ignored.append(name)  # a neutral value of a field Tandem has no use for
        elif name in ignored_fields or name not in declared:
            ignored.append(name)
    return sorted(set(ignored))


def ignored_header(names: list[str]) -> dict[str, str]:
    """The response header for the ignored fields (empty dict when there are none). Unknown
    field names are the client's: percent-encoded, so any of them fits in a header."""
    return {IGNORED_PARAMS_HEADER: ", ".join(quote(name) for name in names)} if names else {}


# Request header that sets (overrides) a chat or completions request's `priority`.
PRIORITY_HEADER = "x-tandem-priority"


def apply_priority_header(body: BaseModel, headers: Mapping[str, str]) -> None:
    """Set `body.priority` from the `x-tandem-priority` header when it is there; a value that
    is not an integer in range is a 400 naming the header."""
    raw = headers.get(PRIORITY_HEADER)
    if raw is None:
        return
    try:
        priority = int(raw.strip())
    except ValueError:
        priority = None
    if priority is None or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise invalid_request(
            f"The {PRIORITY_HEADER} header must be an integer in [{MIN_PRIORITY}, "
            f"{MAX_PRIORITY}], got {raw!r}.", param=PRIORITY_HEADER)
    body.priority = priority
