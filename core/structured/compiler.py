"""Compiling `GrammarSpec`s with llguidance, bounded in size and time.

Owns: the model's llguidance tokenizer (built once per served model, with the model's padded
vocabulary and its EOS ids), turning a spec into an llguidance grammar, compiling it into a
matcher under llguidance's parser limits, the byte cap and a wall-clock bound, and a small LRU
cache of compiled matchers from which every constrained choice gets its own copy. A spec's
`reasoning` prefix and its `tool_calls` alternative compose it with sub-grammars: the think
block, then the spec's answer or (tools under "auto") tool calls.

A spec is checked at admission, off the engine thread (`GrammarCompiler.check`): it is compiled
and a copy walked through a few random allowed tokens, computing each mask (a hostile regex's
lexer blows up there, within llguidance's limits), in a worker thread that the caller waits on
for at most `GrammarLimits.compile_timeout_s`. Any failure is an `InvalidParameter` naming the
spec's `param`, before a token is generated. Per-step limits still bound what a grammar can
cost later; a matcher failing mid-generation fails only its request.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import llguidance
import llguidance.hf
import llguidance.numpy
import numpy as np
from llguidance.gbnf_to_lark import GbnfToLarkError, any_to_lark

from core.errors import InvalidParameter
from core.structured import GrammarSpec
from core.structured.schema import close_objects

# JSON output without free whitespace: a model cannot pad forever between tokens, and the
# text is compact (`{"a":1,"b":[true]}`). A schema may ask otherwise through `x-guidance`.
JSON_DEFAULTS = {"whitespace_flexible": False}
PROBE_STEPS = 16  # tokens a new grammar is walked through at admission


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds on what a request's grammar may cost."""

    max_source_bytes: int = 64 * 1024  # schema / regex / grammar text at most
    compile_timeout_s: float = 5.0  # wall clock for compiling and the first mask
    max_cached_grammars: int = 128  # compiled matchers kept for reuse (LRU)
    # llguidance's own limits (see `llguidance.LLParserLimits`); the rest keep its defaults
    initial_lexer_fuel: int = 200_000  # regex construction; a nested repeat fails in ~0.1 s
    max_grammar_size: int = 200_000  # symbols in the grammar's productions
    step_max_items: int = 50_000  # Earley items per mask


class GrammarCompiler:
    """Grammar compilation for one served model; thread-safe."""

    def __init__(self, hf_tokenizer, vocab_size: int, eos_token_ids, limits=GrammarLimits()):
        self.limits = limits
        self.vocab_size = vocab_size  # the model's (padded) vocabulary: the bitmask's width
        self.tokenizer = llguidance.hf.from_tokenizer(
            hf_tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_token_ids))
        self._parser_limits = llguidance.LLParserLimits(
            initial_lexer_fuel=limits.initial_lexer_fuel,
            max_grammar_size=limits.max_grammar_size, step_max_items=limits.step_max_items,
            verbose_errors=False)
        self._cache: OrderedDict[GrammarSpec, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="tandem-grammar")

    def check(self, spec: GrammarSpec) -> None:
        """Compile `spec` (or find it cached) within the time bound; raises InvalidParameter."""
        self._template(spec)

    def new_matcher(self, spec: GrammarSpec) -> llguidance.LLMatcher:
        """A fresh matcher of `spec` for one choice (compiled here when not cached)."""
        return self._template(spec).deep_copy()

    def _template(self, spec: GrammarSpec) -> llguidance.LLMatcher:
        """The compiled, never advanced matcher of `spec`: cached, or compiled now."""
        matcher = self._cached(spec)
        if matcher is not None:
            return matcher
        future = self._pool.submit(self._compile, spec)
        try:
            matcher = future.result(timeout=self.limits.compile_timeout_s)
        except concurrent.futures.TimeoutError:
            # the worker keeps running until llguidance's limits stop it; nobody waits on it
            raise InvalidParameter(
                f"{spec.param}: the {_describe(spec)} took longer than "
                f"{self.limits.compile_timeout_s:g} s to compile; simplify it",
                param=spec.param) from None
        with self._lock:
            self._cache[spec] = matcher
            while len(self._cache) > self.limits.max_cached_grammars:
                self._cache.popitem(last=False)
        return matcher

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _cached(self, spec: GrammarSpec) -> llguidance.LLMatcher | None:
        with self._lock:
            matcher = self._cache.get(spec)
            if matcher is not None:
                self._cache.move_to_end(spec)
            return matcher

    def _compile(self, spec: GrammarSpec) -> llguidance.LLMatcher:
        grammar = grammar_text(spec, self.limits.max_source_bytes)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0,
                                       limits=self._parser_limits)
        error = matcher.get_error() if matcher.is_error() else _probe(matcher.deep_copy(),
                                                                       self.vocab_size)
        if error:
            param = spec.param
            if spec.tool_calls:  # the answer alone compiles (else it raises): the calls fail
                self._compile(replace(spec, tool_calls=""))
                param = "tools"
            what = "tool-call grammar" if param == "tools" else _describe(spec)
            raise InvalidParameter(f"{param}: invalid {what}: {one_line(error)}", param=param)
        return matcher


def _probe(matcher: llguidance.LLMatcher, vocab_size: int, num_steps: int = PROBE_STEPS) -> str:
    """Walk a copy of a new matcher through a few random allowed tokens, computing each mask:
    a hostile pattern's lexer blows up there (inside llguidance's limits), before any
    request runs it. Returns the matcher's error, or "" when none showed."""
    rng = np.random.default_rng(0)
    mask = llguidance.numpy.allocate_token_bitmask(1, vocab_size)
    for _ in range(num_steps):
        llguidance.numpy.fill_next_token_bitmask(matcher, mask)
        if matcher.is_error() or matcher.is_stopped():
            break
        allowed = np.flatnonzero(np.unpackbits(mask[0].view(np.uint8), bitorder="little"))
        if allowed.size == 0 or not matcher.consume_token(int(rng.choice(allowed))):
            break
    return matcher.get_error() if matcher.is_error() else ""


def grammar_text(spec: GrammarSpec, max_source_bytes: int) -> str:
    """The llguidance grammar of a spec; raises InvalidParameter for what cannot be one."""
    if spec.reasoning is not None:
        return _after_reasoning(spec, max_source_bytes)
    if spec.tool_calls:
        return _answer_or_calls(spec, max_source_bytes)
    if len(spec.source.encode()) > max_source_bytes:
        raise InvalidParameter(f"{spec.param}: the {_describe(spec)} is longer than "
                               f"{max_source_bytes} bytes", param=spec.param)
    try:
        if spec.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(
                '{"type": "object"}', defaults=JSON_DEFAULTS)
        if spec.kind == "json_schema":
            schema = json.loads(spec.source)
            if not isinstance(schema, (dict, bool)):
                raise ValueError("a JSON Schema is an object")
            source = spec.source if spec.open_objects else json.dumps(close_objects(schema))
            return llguidance.LLMatcher.grammar_from_json_schema(
                source, defaults=JSON_DEFAULTS, overrides={"lenient": not spec.strict})
        if spec.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.source)
        if spec.kind == "choice":
            return llguidance.LLMatcher.grammar_from_lark(_choice_lark(spec.source))
        if spec.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(spec.source)
        if spec.kind == "llguidance":
            return spec.source if spec.source.lstrip().startswith("{") else \
                llguidance.LLMatcher.grammar_from_lark(spec.source)
        if spec.kind == "grammar":
            return llguidance.LLMatcher.grammar_from_lark(any_to_lark(spec.source))
    except (ValueError, TypeError, GbnfToLarkError) as exc:  # incl. json.JSONDecodeError
        raise InvalidParameter(f"{spec.param}: invalid {_describe(spec)}: {exc}",
                               param=spec.param) from exc
    raise InvalidParameter(f"{spec.param}: unknown grammar kind {spec.kind!r}",
                           param=spec.param)


def _after_reasoning(spec: GrammarSpec, max_source_bytes: int) -> str:
    """The think block (free text up to its end marker, the budget forcing the marker), then
    the spec's own grammar as a sub-grammar: the constraint starts where the block ends."""
    prefix = spec.reasoning
    lines, subs = [], []
    if spec.kind == "text":
        answer = "<[*]>*"
    else:
        inner = grammar_text(replace(spec, reasoning=None), max_source_bytes)
        subs = _named_grammars(inner, "reasoning_answer")
        answer = "@reasoning_answer"
    block = f"{prefix.start} think" if prefix.start else "think"
    lines.append(f"start: ({block})? {answer}" if prefix.optional else f"start: {block} {answer}")
    budget = f"max_tokens={prefix.max_tokens}" if prefix.max_tokens is not None else ""
    if prefix.end:
        lines.append(f'think: think_text {prefix.end} "\\n"? "\\n"?')
        attributes = f"[{budget}]" if budget else ""
    else:  # the end marker is text: a lazy lexeme that consumes it
        lines.append('think: think_text "\\n"? "\\n"?')
        attributes = "[" + ", ".join(filter(None, [f"stop={json.dumps(prefix.end_text)}",
                                                    budget])) + "]"
    lines.append(f"think_text{attributes}: /(?s:.*)/")
    return json.dumps({"grammars": [{"lark_grammar": "\n".join(lines) + "\n"}, *subs]})


def _answer_or_calls(spec: GrammarSpec, max_source_bytes: int) -> str:
    """The spec's own answer, or tool calls in the family's syntax: one grammar of two
    sub-grammars, so that the model may answer in the format or call a tool."""
    if len(spec.tool_calls.encode()) > max_source_bytes:
        raise InvalidParameter(f"tools: the tool-call grammar is longer than {max_source_bytes} "
                               "bytes", param="tools")
    answer = _named_grammars(grammar_text(replace(spec, tool_calls=""), max_source_bytes),
                             "answer")
    calls = _named_grammars(spec.tool_calls, "tool_calls")
    return json.dumps({"grammars": [{"lark_grammar": "start: @answer | @tool_calls\n"},
                                    *answer, *calls]})


def _named_grammars(text: str, name: str) -> list[dict]:
    """The grammars of llguidance grammar text (a Lark text or a top-level JSON grammar), the
    first one (where it starts) named `name` for a reference `@name`."""
    grammars = (json.loads(text)["grammars"] if text.lstrip().startswith("{")
                else [{"lark_grammar": text}])
    grammars[0]["name"] = name
    return grammars


def _choice_lark(source: str) -> str:
    """`start: "a" | "b"` from a JSON list of strings (JSON string literals are Lark's)."""
    choices = json.loads(source)
    if (not isinstance(choices, list) or not choices
            or not all(isinstance(choice, str) and choice for choice in choices)):
        raise ValueError("choices must be a non-empty list of non-empty strings")
    return "start: " + " | ".join(json.dumps(choice) for choice in choices)


def _describe(spec: GrammarSpec) -> str:
    if spec.tool_calls:
        return "grammar of tool calls or " + _describe(replace(spec, tool_calls=""))
    return {"json_object": "JSON object format", "json_schema": "JSON schema",
            "regex": "regex", "choice": "choice list"}.get(spec.kind, "grammar")


def one_line(message: str, max_chars: int = 400) -> str:
    """llguidance's multi-line error as one line of bounded length."""
    message = message.replace("<non-verbose/>", "")  # llguidance's mark of elided details
    text = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return (text or "rejected by llguidance")[:max_chars]
