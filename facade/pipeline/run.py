"""The run state of one chat or completions request: what its choices and calls produced so far.

`ChoiceState` accumulates one choice (text, logprobs, offsets, the finish and stop reason, prompt
logprobs, cumulative logprob, tool-call fragments assembled by index); `UsageTotal` keeps each
core call's latest cumulative usage; `GenerationRun` holds a request's OpenAI identity, its
choices and usage, checks that every choice finished, and frames its SSE chunks. The chat and
completions runs (facade/pipeline/chat.py, facade/pipeline/completions.py) build on it; the
pure proto → OpenAI translation they use is in facade/convert.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from facade.bodies import CompletionTokensDetails, PromptTokensDetails, Usage
from facade.convert import finish_reason, stop_reason
from facade.errors import ApiError, internal_error
from facade.protocol import ChatCompletionRequest, CompletionRequest
from facade.sse import sse_event
from tandem.v1 import inference_pb2 as pb


@dataclass
class ChoiceState:
    """Everything one choice produced so far (non-streaming answers are built from it)."""

    text_parts: list[str] = field(default_factory=list)  # text deltas in order
    reasoning_parts: list[str] = field(default_factory=list)  # reasoning deltas in order
    num_chars: int = 0  # characters of text so far (echoed prompt included)
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)  # one per generated token
    text_offsets: list[int] = field(default_factory=list)  # character offset per logprob entry
    finish_reason: str | None = None  # set once the choice ended
    stop_reason: str | int | None = None
    prompt_logprobs: list[pb.TokenLogprob] = field(default_factory=list)  # every prompt token
    cumulative_logprob: float = 0.0  # of the chosen tokens (best_of ranks by it)
    # index → [id, name, arguments (a custom tool's: input), type ("function" / "custom")]
    tool_calls: dict[int, list[str]] = field(default_factory=dict)

    def add_text(self, text: str) -> None:
        self.text_parts.append(text)
        self.num_chars += len(text)

    def add(self, choice: pb.ChoiceDelta) -> int:
        """Record one delta; returns the character offset at which its text starts."""
        offset = self.num_chars
        self.prompt_logprobs.extend(choice.prompt_logprobs)
        if choice.HasField("cumulative_logprob"):
            self.cumulative_logprob = choice.cumulative_logprob
        self.logprobs.extend(choice.logprobs)
        self.text_offsets.extend([offset] * len(choice.logprobs))
        self.add_text(choice.text)
        if choice.reasoning_text:
            self.reasoning_parts.append(choice.reasoning_text)
        for call in choice.tool_calls:
            parts = self.tool_calls.setdefault(call.index, ["", "", "", ""])
            parts[0] += call.id
            parts[1] += call.function.name
            parts[2] += call.function.arguments
            parts[3] += call.type
        if finish_reason(choice) is not None:
            self.finish_reason = finish_reason(choice)
            self.stop_reason = stop_reason(choice)
        return offset

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def reasoning(self) -> str | None:
        """The think block's text (None: the choice had none)."""
        return "".join(self.reasoning_parts) if self.reasoning_parts else None


def unfinished_error(unfinished: Iterable[int]) -> ApiError:
    """A core stream ended before some choices got a finish reason: never end silently."""
    indexes = ", ".join(str(index) for index in sorted(unfinished))
    return internal_error(f"The core ended the response before choice(s) {indexes} finished.")


@dataclass
class UsageTotal:
    """The core's cumulative usage of each call of one HTTP request, summed on demand."""

    by_call: dict[int, pb.Usage] = field(default_factory=dict)  # call index → latest Usage

    def update(self, call_index: int, response: pb.GenerateResponse) -> None:
        if response.HasField("usage"):
            self.by_call[call_index] = response.usage

    def prompt_only(self) -> Usage:
        """Usage before any completion token (vLLM's continuous usage on the role chunk)."""
        prompt_tokens = sum(usage.prompt_tokens for usage in self.by_call.values())
        cached_tokens = sum(usage.cached_tokens for usage in self.by_call.values())
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            total_tokens=prompt_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
        )

    def total(self) -> Usage:
        prompt_tokens = sum(usage.prompt_tokens for usage in self.by_call.values())
        completion_tokens = sum(usage.completion_tokens for usage in self.by_call.values())
        cached_tokens = sum(usage.cached_tokens for usage in self.by_call.values())
        reasoning_tokens = sum(usage.reasoning_tokens for usage in self.by_call.values())
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
            completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens)
            if reasoning_tokens else None,
        )


@dataclass(kw_only=True)
class GenerationRun:
    """One chat or completions request in flight: its OpenAI identity, the choices and usage
    so far. Subclasses say how many choices there are and build their own chunk choices."""

    request: ChatCompletionRequest | CompletionRequest
    completion_id: str  # "chatcmpl-<request id>" or "cmpl-<request id>"
    created: int  # unix seconds
    model: str  # the model the core reports (else the requested one)
    usage: UsageTotal = field(default_factory=UsageTotal)
    choices: dict[int, ChoiceState] = field(default_factory=dict)  # choice index → state

    @property
    def num_choices(self) -> int:
        return self.request.n or 1

    def state(self, index: int) -> ChoiceState:
        return self.choices.setdefault(index, ChoiceState())

    def check_finished(self) -> None:
        """Every choice got a finish reason; otherwise the core broke the stream."""
        unfinished = [
            index for index in range(self.num_choices) if self.state(index).finish_reason is None
        ]
        if unfinished:
            raise unfinished_error(unfinished)

    def sse_chunk(self, chunk_type: type, choices: list, usage: Usage | None = None) -> bytes:
        """One SSE event of `chunk_type` (a chat or completions chunk model)."""
        chunk = chunk_type(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )
        usage_shown = self.request.include_usage or self.request.continuous_usage
        return sse_event(chunk, exclude=None if usage_shown else {"usage"})
