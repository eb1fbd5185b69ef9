"""Contract messages (protobuf) → validated internal requests of the core.

Owns: the core's own validation of every Generate field (the facade validates too, but gRPC
clients reach the core directly), turning the input oneof into prompt token ids (text, token
ids, or chat messages through the model's template), and the context-length check.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from core.engine.request import MAX_MIN_TOKENS_IDS, Request, SamplingParams, StoppingParams
from core.errors import ContextLengthExceeded, InvalidParameter, Unsupported
from core.service.tools.plan import check_tool_choice, tools_shown
from core.structured import GrammarSpec
from core.tokenizer import ChatPrompt, Tokenizer, parse_json_object
from tandem.limits import (
    MAX_CHOICES,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_PRIORITY,
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    MIN_PRIORITY,
)
from tandem.v1 import inference_pb2 as pb

MAX_BAD_WORDS = 32  # each gives ≤ 2 sequences: ≤ MAX_BANNED_IDS bans per step
MAX_REPETITION_PENALTY = 100.0


@dataclass(frozen=True)
class PromptPolicy:
    """What the core accepts as a prompt; fixed once the model is loaded."""

    vocab_size: int  # token ids must be below this
    max_model_len: int  # prompt tokens must be below this
    max_token_chars: int  # the longest token's length: bounds characters per token
    allow_request_chat_template: bool = False  # may a request bring its own Jinja template?
    tool_call_parser: str = "auto"  # the tool-call syntax ("auto": read off the chat template)
    reasoning_parser: str = "auto"  # the think-block syntax ("auto": read off the template)
    # JSON Schema objects without additionalProperties stay open (else closed: the default)
    json_open_objects: bool = False

    @property
    def max_prompt_chars(self) -> int:
        """Text longer than this cannot fit in max_model_len tokens: rejected before tokenizing."""
        return self.max_model_len * max(self.max_token_chars, 1)


def chat_prompt(chat: pb.ChatInput, policy: PromptPolicy) -> ChatPrompt:
    messages = [_chat_message(message, index) for index, message in enumerate(chat.messages)]
    check_tool_choice(chat)
    tools = [_template_tool(tool) for tool in chat.tools] if tools_shown(chat) else []
    return ChatPrompt(
        messages=messages, tools=tools or None,
        add_generation_prompt=(chat.add_generation_prompt
                               if chat.HasField("add_generation_prompt") else True),
        continue_final_message=chat.continue_final_message,
        template_kwargs=template_kwargs(chat.chat_template_kwargs_json),
        chat_template=_request_chat_template(chat, policy))


# What a request's chat_template_kwargs may not set: the variables the server gives the template,
# and apply_chat_template's own parameters (CVE-2025-62426: kwargs that reach the renderer).
RESERVED_TEMPLATE_KWARGS = frozenset({
    "messages", "conversation", "tools", "documents", "add_generation_prompt",
    "continue_final_message", "chat_template", "tokenize", "padding", "truncation",
    "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
    "tokenizer_kwargs", "processor_kwargs", "bos_token", "eos_token", "unk_token", "pad_token",
    "raise_exception", "strftime_now", "tokenizer", "self", "kwargs"})
MAX_TEMPLATE_KWARGS_BYTES = 8 * 1024
MAX_TEMPLATE_KWARGS_DEPTH = 8


def template_kwargs(raw: str) -> dict:
    """A request's chat_template_kwargs: a JSON object of plain values, bounded in size and
    depth, whose keys are identifiers the server does not set itself."""
    param = "chat_template_kwargs"
    if len(raw.encode()) > MAX_TEMPLATE_KWARGS_BYTES:
        raise InvalidParameter(f"{param} is longer than {MAX_TEMPLATE_KWARGS_BYTES} bytes",
                               param=param)
    kwargs = parse_json_object(raw, param)
    for key, value in kwargs.items():
        if not key.isidentifier():
            raise InvalidParameter(f"{param}: {key!r} is not a template variable name",
                                   param=param)
        if key in RESERVED_TEMPLATE_KWARGS or key.startswith("_"):
            raise InvalidParameter(f"{param}: {key!r} is set by the server and cannot be "
                                   "overridden", param=param)
        if _depth(value) > MAX_TEMPLATE_KWARGS_DEPTH:
            raise InvalidParameter(f"{param}: {key!r} nests deeper than "
                                   f"{MAX_TEMPLATE_KWARGS_DEPTH} levels", param=param)
    return kwargs


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _request_chat_template(chat: pb.ChatInput, policy: PromptPolicy) -> str | None:
    if not chat.chat_template:  # unset or empty: the model's own template
        return None
    if not policy.allow_request_chat_template:
        raise Unsupported("a chat_template in the request is not allowed by this server (start "
                          "the core with --trust-request-chat-template)", param="chat_template")
    return chat.chat_template


def _chat_message(message: pb.ChatMessage, index: int) -> dict:
    texts = []
    for part in message.content:
        if part.WhichOneof("part") != "text":
            raise Unsupported(f"messages[{index}]: {part.WhichOneof('part')} content is not "
                              "supported by this text-only model", param="messages")
        texts.append(part.text)
    result: dict = {"role": message.role, "content": "".join(texts)}
    if message.HasField("name"):
        result["name"] = message.name
    if message.HasField("tool_call_id"):
        result["tool_call_id"] = message.tool_call_id
    if message.reasoning_content:  # Qwen3's and DeepSeek's templates read this name
        result["reasoning_content"] = message.reasoning_content
    if message.tool_calls:
        # a custom tool's call shows as a function call whose arguments are its raw input
        result["tool_calls"] = [{"id": call.id, "type": "function", "function": {
            "name": call.function.name, "arguments": call.function.arguments
            if call.type == "custom" else _arguments(call.function.arguments)}}
            for call in message.tool_calls]
    return result


def _template_tool(tool: pb.Tool) -> dict:
    """A tool as chat templates take it: every template knows function tools only, so a custom
    tool is one whose description says that its input is free-form text."""
    if tool.type != "custom":
        return {"type": tool.type or "function", "function": {
            "name": tool.name, "description": tool.description,
            "parameters": parse_json_object(tool.parameters_json, "tools")}}
    form = (f"text matching this {tool.format_syntax} grammar: {tool.format_definition}"
            if tool.format_syntax in ("lark", "regex") else "free-form text")
    note = f"(a custom tool: its input is {form}, not JSON arguments)"
    return {"type": "function", "function": {
        "name": tool.name, "description": f"{tool.description} {note}".strip(),
        "parameters": {}}}


def _arguments(raw: str):
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return raw


def prompt_token_ids(tokenizer: Tokenizer, policy: PromptPolicy, request,
                     allow_empty: bool = False) -> list[int]:
    """The prompt of a GenerateRequest or TokenizeRequest as token ids (CPU-bound: call it off
    the event loop)."""
    kind = request.WhichOneof("input")
    param = "messages" if kind == "chat" else "prompt"
    _check_prompt_chars(request, kind, policy, param)
    add_special = (request.add_special_tokens if request.HasField("add_special_tokens")
                   else True)
    if kind == "text":
        ids = tokenizer.encode(request.text, add_special_tokens=add_special)
    elif kind == "tokens":
        ids = list(request.tokens.ids)
        check_token_ids(ids, policy.vocab_size, "prompt")
    elif kind == "chat":
        ids = tokenizer.apply_chat_template(chat_prompt(request.chat, policy))
    else:
        raise InvalidParameter("one of text, tokens or chat is required", param="prompt")
    if (not ids or (kind == "text" and not request.text)) and not allow_empty:
        raise InvalidParameter(f"{param} must not be empty (it has no tokens)", param=param)
    return ids


def _check_prompt_chars(request, kind: str, policy: PromptPolicy, param: str) -> None:
    """Reject text that cannot fit before spending CPU on tokenizing it."""
    if kind == "text":
        num_chars = len(request.text)
    elif kind == "chat":
        num_chars = sum(len(part.text) for message in request.chat.messages
                        for part in message.content)
    else:
        return
    if num_chars > policy.max_prompt_chars:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {policy.max_model_len} tokens; the "
            f"{param} has {num_chars} characters, more than any {policy.max_model_len} tokens "
            "can hold. Please reduce the length of the prompt.", param=param,
            metadata={"max_model_len": str(policy.max_model_len)})


def check_token_ids(ids, vocab_size: int, param: str) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise InvalidParameter(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})",
                               param=param)


def _check_range(value: float, name: str, low: float, high: float, low_open=False) -> None:
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise InvalidParameter(f"{name} must be in {bracket}{low}, {high}], got {value}",
                               param=name)


def sampling_params(sampling: pb.SamplingParams, vocab_size: int) -> SamplingParams:
    def get(name, default):
        return getattr(sampling, name) if sampling.HasField(name) else default

    temperature, top_p = get("temperature", 1.0), get("top_p", 1.0)
    top_k, min_p = get("top_k", 0), get("min_p", 0.0)
    _check_range(temperature, "temperature", 0.0, 100.0)
    _check_range(top_p, "top_p", 0.0, 1.0, low_open=True)
    _check_range(min_p, "min_p", 0.0, 1.0)
    if top_k < -1:
        raise InvalidParameter(f"top_k must be -1, 0 (off) or positive, got {top_k}",
                               param="top_k")
    for name in ("presence_penalty", "frequency_penalty"):
        _check_range(get(name, 0.0), name, -2.0, 2.0)
    repetition_penalty = get("repetition_penalty", 1.0)
    _check_range(repetition_penalty, "repetition_penalty", 0.0, MAX_REPETITION_PENALTY,
                 low_open=True)
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=max(top_k, 0),
                          min_p=min_p, seed=get("seed", None),
                          presence_penalty=get("presence_penalty", 0.0),
                          frequency_penalty=get("frequency_penalty", 0.0),
                          repetition_penalty=repetition_penalty,
                          logit_bias=_logit_bias(sampling, vocab_size),
                          allowed_token_ids=_allowed_token_ids(sampling, vocab_size))


def _logit_bias(sampling: pb.SamplingParams, vocab_size: int) -> tuple[tuple[int, float], ...]:
    if len(sampling.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidParameter(f"logit_bias has {len(sampling.logit_bias)} entries, at most "
                               f"{MAX_LOGIT_BIAS_ENTRIES}", param="logit_bias")
    check_token_ids(sampling.logit_bias.keys(), vocab_size, "logit_bias")
    for bias in sampling.logit_bias.values():
        _check_range(bias, "logit_bias", -100.0, 100.0)
    return tuple(sorted(sampling.logit_bias.items()))


def _allowed_token_ids(sampling: pb.SamplingParams, vocab_size: int) -> tuple[int, ...] | None:
    if not sampling.HasField("allowed_token_ids"):
        return None
    ids = tuple(sampling.allowed_token_ids.ids)
    if not ids:
        raise InvalidParameter("allowed_token_ids must not be empty", param="allowed_token_ids")
    check_token_ids(ids, vocab_size, "allowed_token_ids")
    return ids


def bad_words_token_ids(tokenizer: Tokenizer, bad_words) -> tuple[tuple[int, ...], ...]:
    """Each bad word's token ids, alone and after a space (as vLLM tokenizes them: the spaced
    form is added when it is a different first token of the same length)."""
    if len(bad_words) > MAX_BAD_WORDS:
        raise InvalidParameter(f"at most {MAX_BAD_WORDS} bad_words", param="bad_words")
    sequences: list[tuple[int, ...]] = []
    for word in bad_words:
        plain = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        if not plain:
            raise InvalidParameter("bad_words must not contain empty words", param="bad_words")
        sequences.append(plain)
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            sequences.append(spaced)
    return tuple(sequences)


def generation_requests(request: pb.GenerateRequest, prompt_ids: list[int], request_id: str,
                        policy: PromptPolicy, max_choices: int = MAX_CHOICES,
                        tokenizer: Tokenizer | None = None) -> list[Request]:
    """One internal Request per choice, validated; raises the contract's typed errors.
    `tokenizer` turns bad_words into token ids (required when the request has some)."""
    vocab_size, max_model_len = policy.vocab_size, policy.max_model_len
    sampling = sampling_params(request.sampling, vocab_size)
    if request.sampling.bad_words:
        sampling = replace(sampling, bad_words_token_ids=bad_words_token_ids(
            tokenizer, request.sampling.bad_words))
    stopping = request.stopping
    num_choices = request.n if request.HasField("n") else 1
    if not 1 <= num_choices <= max_choices:
        raise InvalidParameter(f"n must be in [1, {max_choices}], got {num_choices}", param="n")
    prompt_logprobs = request.prompt_logprobs if request.HasField("prompt_logprobs") else None
    if prompt_logprobs is not None and prompt_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidParameter(f"prompt_logprobs must be at most {MAX_TOP_LOGPROBS}",
                               param="prompt_logprobs")
    grammar = output_constraint(request, open_objects=policy.json_open_objects)
    if len(stopping.stop) > MAX_STOP_STRINGS:
        raise InvalidParameter(f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    check_token_ids(stopping.stop_token_ids, vocab_size, "stop_token_ids")
    top_logprobs = request.top_logprobs if request.HasField("top_logprobs") else 0
    if top_logprobs > MAX_TOP_LOGPROBS:
        raise InvalidParameter(f"top_logprobs must be at most {MAX_TOP_LOGPROBS}",
                               param="top_logprobs")
    prompt_param = "messages" if request.WhichOneof("input") == "chat" else "prompt"
    max_tokens = _max_tokens(stopping, len(prompt_ids), max_model_len, prompt_param,
                             allow_zero=prompt_logprobs is not None)
    min_tokens = stopping.min_tokens if stopping.HasField("min_tokens") else 0
    if min_tokens > max_tokens:
        raise InvalidParameter(f"min_tokens ({min_tokens}) must not exceed max_tokens "
                               f"({max_tokens})", param="min_tokens")
    if min_tokens and len(stopping.stop_token_ids) > MAX_MIN_TOKENS_IDS - 4:
        raise InvalidParameter("with min_tokens, at most "
                               f"{MAX_MIN_TOKENS_IDS - 4} stop_token_ids",
                               param="stop_token_ids")
    detokenize = request.detokenize if request.HasField("detokenize") else True
    if not detokenize and stopping.stop:
        raise InvalidParameter("stop strings need the text: not with detokenize false (stop on "
                               "stop_token_ids instead)", param="stop")
    stop = StoppingParams(
        detokenize=detokenize,
        max_tokens=max_tokens, min_tokens=min_tokens, stop_strings=tuple(stopping.stop),
        stop_token_ids=tuple(stopping.stop_token_ids), ignore_eos=stopping.ignore_eos,
        include_stop_str_in_output=stopping.include_stop_str_in_output,
        skip_special_tokens=(stopping.skip_special_tokens
                             if stopping.HasField("skip_special_tokens") else True))
    priority = request.priority if request.HasField("priority") else 0
    if not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidParameter(f"priority must be in [{MIN_PRIORITY}, {MAX_PRIORITY}], got "
                               f"{priority}", param="priority")
    requests = []
    for index in range(num_choices):
        requests.append(Request(
            request_id=f"{request_id}-{index}", prompt_token_ids=list(prompt_ids),
            sampling=replace(sampling, choice_index=index), stopping=stop,
            want_logprobs=request.logprobs or request.HasField("top_logprobs"),
            top_logprobs=top_logprobs, cache_salt=request.cache_salt,
            group_id=request_id if num_choices > 1 else "", priority=priority,
            # the prompt is scored once, by the first choice; its siblings use the cache
            prompt_logprobs=prompt_logprobs if index == 0 else None, grammar=grammar))
    return requests


def output_constraint(request: pb.GenerateRequest,
                      open_objects: bool = False) -> GrammarSpec | None:
    """The grammar of `response_format` or `structured_outputs` (at most one of them); checked
    for shape here, compiled by the engine (`Engine.check_grammar`). A JSON Schema's objects
    without additionalProperties are closed unless `open_objects`."""
    response_format = request.response_format
    structured = request.structured_outputs
    kind = structured.WhichOneof("constraint") if request.HasField("structured_outputs") \
        else None
    param = structured.param or "structured_outputs"
    if kind is not None and response_format.type in (pb.ResponseFormat.TYPE_JSON_OBJECT,
                                                     pb.ResponseFormat.TYPE_JSON_SCHEMA):
        raise InvalidParameter(f"{param} and a JSON response_format cannot be combined",
                               param=param)
    if response_format.type == pb.ResponseFormat.TYPE_JSON_OBJECT:
        return GrammarSpec("json_object", "", "response_format")
    if response_format.type == pb.ResponseFormat.TYPE_JSON_SCHEMA:
        if not response_format.json_schema:
            raise InvalidParameter("response_format json_schema needs a schema",
                                   param="response_format")
        return GrammarSpec("json_schema", response_format.json_schema, "response_format",
                           strict=response_format.strict, open_objects=open_objects)
    if kind == "json":
        return GrammarSpec("json_schema", structured.json, param, open_objects=open_objects)
    if kind == "json_object":
        return GrammarSpec("json_object", "", param) if structured.json_object else None
    if kind == "choice":
        return GrammarSpec("choice", json.dumps(list(structured.choice.choices)), param)
    if kind in ("regex", "grammar"):
        source = getattr(structured, kind)
        if not source:
            raise InvalidParameter(f"{param}: the {kind} is empty", param=param)
        return GrammarSpec(kind, source, param)
    return None


def _max_tokens(stopping: pb.StoppingCriteria, num_prompt_tokens: int, max_model_len: int,
                prompt_param: str, allow_zero: bool = False) -> int:
    if stopping.HasField("max_tokens") and stopping.max_tokens < 1 and not allow_zero:
        raise InvalidParameter("max_tokens must be at least 1 (0 only with prompt_logprobs)",
                               param="max_tokens")
    if stopping.HasField("max_tokens") and stopping.max_tokens == 0:
        if num_prompt_tokens > max_model_len:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {max_model_len} tokens. However, you "
                f"requested {num_prompt_tokens} tokens in the prompt.", param=prompt_param,
                metadata={"max_model_len": str(max_model_len)})
        return 0
    requested = stopping.max_tokens if stopping.HasField("max_tokens") else None
    total = num_prompt_tokens + (requested or 1)
    if total > max_model_len:
        asked = (f"{total} tokens ({num_prompt_tokens} in the prompt, {requested} in the "
                 "completion)" if requested else f"{num_prompt_tokens} tokens in the prompt")
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {asked}. Please reduce the length of the prompt or completion.",
            param=prompt_param,
            metadata={"max_model_len": str(max_model_len),
                      "prompt_tokens": str(num_prompt_tokens)})
    return requested or max_model_len - num_prompt_tokens
