"""What one engine step hands between its stages: the dataclasses of a step in flight.

Owns `PromptScores` (a call's per-position logprobs, on device), `DispatchedStep` (forward
passes dispatched, the device computing), `SampledStep` (sampling dispatched too, results still
on device: async scheduling feeds the next step from them) and `StepOutput` (the host copies, in
chunk order). `core/engine/runner.py` makes them; the engine loop reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import numpy as np

from core.engine.request import SchedulerOutput, TokenLogprob
from core.engine.verifier import VerifiedChunk


@jax.tree_util.register_dataclass
@dataclass
class PromptScores:
    """Logprobs at every position of a call (zeros unless prompt logprobs were asked for)."""

    logprobs: jax.Array  # [b, t] float32: of the prompt token each position predicts
    top_ids: jax.Array  # [b, t, MAX_TOP_LOGPROBS] int32
    top_logprobs: jax.Array  # [b, t, MAX_TOP_LOGPROBS] float32


@dataclass(frozen=True)
class StepOutput:
    """Host copies of the sampled results, one row per scheduled chunk, in chunk order."""

    token_ids: np.ndarray  # [chunks] int
    logprobs: np.ndarray  # [chunks] float, of the chosen tokens
    top_ids: np.ndarray  # [chunks, MAX_TOP_LOGPROBS]
    top_logprobs: np.ndarray  # [chunks, MAX_TOP_LOGPROBS]
    # chunk index → float64 [vocab] next-token log-softmax, for chunks with `wants_scores`
    score_logprobs: dict[int, np.ndarray]
    # chunk index → TokenLogprob of each of its prompt_targets (chunks that want them)
    prompt_logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)
    # chunk index → per-position results of a speculation chunk (core/engine/verifier.py)
    verified: dict[int, VerifiedChunk] = field(default_factory=dict)


@dataclass(frozen=True)
class DispatchedStep:
    """One step's forward passes, dispatched: the device computes them while the host goes on."""

    output: SchedulerOutput  # the step's work
    # per call: (chunk indices, (device logits [rows, v], prompt scores, sampling inputs))
    forwards: list[tuple[list[int], tuple]]
    # speculation: (chunk indices, device VerifyResult) of the step's verify call, if any
    verifies: list[tuple[list[int], object]] = field(default_factory=list)

    def is_ready(self) -> bool:
        """Has the device finished every forward pass (are the logits there)?"""
        return all(logits.is_ready() for _, (logits, *_) in self.forwards)


@dataclass(frozen=True)
class SampledStep:
    """A dispatched step whose sampling is dispatched too: its results are still on device
    (`ModelRunner.fetch` copies them). Async scheduling feeds the next step from them."""

    output: SchedulerOutput
    calls: list  # (chunk indices, device SampleResult, device logits or None, prompt scores)
    verifies: list  # as DispatchedStep.verifies

    def decode_call(self) -> tuple[list[int], jax.Array] | None:
        """(chunk indices, device sampled token ids [rows bucket]) of its one call, when the
        step was a single decode call (nothing else) — what a continued step can read."""
        if len(self.calls) != 1 or self.verifies:
            return None
        group, result, *_ = self.calls[0]
        return group, result.token_ids
