"""Speculation's verify calls: one forward over the paged cache that keeps the logits of every
position of each verified chunk, then `verify_sample` (core/engine/sampling.py) on them.

Owns: the jitted verify forward and sampler of a `ModelRunner`, their fixed shape set —
[rows bucket (`EngineConfig.verify_buckets`), speculative_ngram + 1 tokens, a decode page-table
width] and one sampler per rows × tokens — compiled at warm-up with the runner's other
executables, and turning a step's verified chunks (last token, d1 … dk) into host results per
position. A chunk shorter than the call pads its positions (the model writes padding to its
scratch page). Only sequences without per-row logits state come here
(core/engine/speculative.py), so the per-row stages are neutral and not applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from core.config import bucket
from core.engine import executables
from core.engine.request import SequenceChunk
from core.engine.sampling import SamplingArrays, verify_sample
from core.models.llama import PADDING_POSITION


@dataclass(frozen=True)
class VerifiedChunk:
    """Host copies of one verified chunk's results, one entry per position (drafts + 1)."""

    accepted: np.ndarray  # [k + 1] bool: draft i (checked at position i) accepted
    token_ids: np.ndarray  # [k + 1]: the token emitted at position i if draft i is rejected
    # (the last: the bonus token once every draft is accepted)
    logprobs: np.ndarray  # [k + 1] raw logprob of the token emitted at position i
    top_ids: np.ndarray  # [k + 1, MAX_TOP_LOGPROBS]
    top_logprobs: np.ndarray  # [k + 1, MAX_TOP_LOGPROBS]


class Verifier:
    def __init__(self, runner, num_drafts: int, out_shardings):
        self.runner = runner
        self.num_tokens = num_drafts + 1  # positions of every verify call
        self.row_buckets = runner.engine_config.verify_buckets()
        self._forward = jax.jit(self._forward_fn, donate_argnames=("pages",),
                                out_shardings=out_shardings)
        self._sample = jax.jit(self._sample_fn)
        self._forward_executables: dict = {}  # (rows, tokens, pages) → executable
        self._sample_executables: dict = {}  # flattened rows → executable

    def _forward_fn(self, param_leaves, pages, token_ids, positions, page_table):
        runner = self.runner
        runner.num_compilations += 1  # runs only while tracing
        model = nnx.merge(runner.graphdef, jax.tree.unflatten(runner.param_treedef, param_leaves))
        hidden, pages = model(token_ids, positions, page_table, pages)  # [b, t, d]
        logits = model.logits(hidden)  # [b, t, v]
        return logits.reshape(-1, logits.shape[-1]), pages

    def _sample_fn(self, logits, sampling, positions, draft_ids, wants_logprobs):
        self.runner.num_compilations += 1  # runs only while tracing
        return verify_sample(logits, sampling, positions, draft_ids, wants_logprobs)

    def shape(self, chunks: list[SequenceChunk]) -> tuple[int, int, int]:
        widest = max(len(chunk.page_ids) for chunk in chunks)
        return (bucket(self.row_buckets, len(chunks)), self.num_tokens,
                bucket(self.runner.page_buckets, widest))

    def _inputs(self, chunks: list[SequenceChunk], shape: tuple[int, int, int]):
        num_rows, num_tokens, num_table_pages = shape
        token_ids = np.zeros((num_rows, num_tokens), np.int32)
        positions = np.full((num_rows, num_tokens), PADDING_POSITION, np.int32)
        page_table = np.zeros((num_rows, num_table_pages), np.int32)
        draft_ids = np.full((num_rows, num_tokens), -1, np.int32)
        for row, chunk in enumerate(chunks):
            length = len(chunk.token_ids)
            token_ids[row, :length] = chunk.token_ids
            positions[row, :length] = np.arange(chunk.start_position,
                                                chunk.start_position + length)
            page_table[row, :len(chunk.page_ids)] = chunk.page_ids
            draft_ids[row, :length - 1] = chunk.draft_token_ids
        params = [chunk.sampling for chunk in chunks for _ in range(num_tokens)]
        sampling = SamplingArrays.from_params(params, num_rows * num_tokens)
        return (token_ids, positions, page_table), (sampling, (positions + 1).reshape(-1),
                                                    draft_ids.reshape(-1))

    def dispatch(self, pages, chunks: list[SequenceChunk], wants_logprobs: bool):
        """Start one verify call (forward, then sampling); returns (the pool, its device
        result). The sampler needs no grammar mask: no verified chunk has a grammar."""
        shape = self.shape(chunks)
        arrays, (sampling, positions, draft_ids) = self._inputs(chunks, shape)
        forward = self._forward_executables.get(shape, self._forward)
        logits, pages = forward(self.runner.param_leaves, pages, *arrays)
        sample = self._sample_executables.get(len(positions), self._sample)
        return pages, logits, sample(logits, sampling, positions, draft_ids,
                                     np.bool_(wants_logprobs))

    @staticmethod
    def results(chunks: list[SequenceChunk], host, num_tokens: int) -> list[VerifiedChunk]:
        """Per chunk of a call, its positions' host results."""
        verified = []
        for row, chunk in enumerate(chunks):
            span = slice(row * num_tokens, row * num_tokens + len(chunk.token_ids))
            verified.append(VerifiedChunk(host.accepted[span], host.token_ids[span],
                                          host.logprobs[span], host.top_ids[span],
                                          host.top_logprobs[span]))
        return verified

    def compile_jobs(self, static: str) -> tuple[list, list]:
        """Warm-up: (shapes, jobs) of every verify forward, then of every verify sampler."""
        runner = self.runner
        shapes = [(rows, self.num_tokens, pages) for rows in self.row_buckets
                  for pages in runner.page_buckets]
        jobs, row_counts = [], []
        for shape in shapes:
            arrays, _ = self._inputs([], shape)
            jobs.append(executables.CompileJob(
                "verify {}×{}×{}".format(*shape), self._forward,
                (runner.param_leaves, runner.pages, *arrays), static))
        for rows in self.row_buckets:
            _, (sampling, positions, draft_ids) = self._inputs([], (rows, self.num_tokens, 1))
            logits = jax.ShapeDtypeStruct((len(positions), runner.config.vocab_size),
                                          np.float32, sharding=runner.replicated)
            row_counts.append(len(positions))
            jobs.append(executables.CompileJob(
                f"verify sampler {len(positions)}", self._sample,
                (logits, sampling, positions, draft_ids, np.bool_(False)), static))
        return shapes + row_counts, jobs

    def warm_run(self, pages):
        """Run every verify shape once on padding (nothing is written to the pool); returns
        the pool."""
        for shape in self._forward_executables:
            arrays, (sampling, positions, draft_ids) = self._inputs([], shape)
            logits, pages = self._forward_executables[shape](self.runner.param_leaves, pages,
                                                             *arrays)
            jax.block_until_ready(self._sample_executables[len(positions)](
                logits, sampling, positions, draft_ids, np.bool_(False)))
        return pages

    def set_executables(self, keys: list, compiled: list) -> None:
        num_shapes = len(self.row_buckets) * len(self.runner.page_buckets)
        self._forward_executables = dict(zip(keys[:num_shapes], compiled[:num_shapes],
                                             strict=True))
        self._sample_executables = dict(zip(keys[num_shapes:], compiled[num_shapes:],
                                            strict=True))
