"""The embedding engine: pooled sentence embeddings, batched across requests in bucketed shapes.

Owns: `EmbeddingEngine` (an `EngineThread` that gathers the token ids of every waiting
submission and runs them as [batch bucket, length bucket] calls of one jitted forward, compiled
at warm-up; inputs of different submissions share calls, the oldest first; too many queued
inputs → OVERLOADED) and its `EmbeddingBuckets`. Validating an Embed request and shaping its
reply (`dimensions`) is the service's (`core/service/embed.py`).

The forward is model-agnostic: `forward(params, token_ids [b, t], attention_mask [b, t]
[, token_type_ids [b, t]][, num_packed_tokens]) → [b, d]` pooled (and, if the model says so,
normalized) vectors — a BERT-family encoder (`core/models/bert.py`) or a decoder's hidden states
pooled (`core/models/llama.py`) — or, for a cross-encoder (`core/models/cross_encoder.py`, built
with `uses_token_types`), each pair's scores [b, labels].
"""

from __future__ import annotations

import bisect
import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import jax
import numpy as np

from core.config import bucket
from core.engine import executables
from core.engine.base import EngineThread
from core.engine.metrics import EngineStats
from core.errors import Overloaded
from tandem.limits import MAX_INPUTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddingBuckets:
    """The padded shapes of encoder calls."""

    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)  # rows per call
    lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # tokens per row
    max_batch_tokens: int = 16384  # rows × length at most (bounds attention memory)
    # Packing (models whose forward supports it): calls of at least `min_packed_rows` rows run
    # their dense layers on only the real tokens, padded up to the first of these fractions of
    # rows × length that holds them. () turns packing off.
    packed_fractions: tuple[float, ...] = ()
    min_packed_rows: int = 64

    def with_max_rows(self, max_rows: int) -> EmbeddingBuckets:
        """Only the batch sizes up to `max_rows` (a larger request is split into several calls):
        fewer shapes to compile and smaller calls, at some throughput on large batches."""
        return replace(self, batch_sizes=tuple(rows for rows in self.batch_sizes
                                               if rows <= max_rows) or self.batch_sizes[:1])

    def for_max_len(self, max_input_tokens: int) -> EmbeddingBuckets:
        """Only the lengths this model needs (the largest covers max_input_tokens)."""
        index = bisect.bisect_left(self.lengths, max_input_tokens)
        lengths = self.lengths[:index + 1] if index < len(self.lengths) else (
            *self.lengths, max_input_tokens)
        return replace(self, lengths=lengths)

    def shapes(self) -> list[tuple[int, int, int | None]]:
        """Every (rows, length, packed tokens or None) a call can have."""
        shapes = []
        for length in self.lengths:
            for rows in self.batch_sizes:
                if rows * length > max(self.max_batch_tokens, length):
                    continue
                shapes.append((rows, length, None))
                if rows >= self.min_packed_rows:
                    shapes += [(rows, length, int(rows * length * fraction))
                               for fraction in self.packed_fractions]
        return shapes

    def packed_tokens(self, rows: int, length: int, num_real_tokens: int) -> int | None:
        """The packed-token bucket of a call, or None: run it unpacked."""
        if rows < self.min_packed_rows:
            return None
        for fraction in self.packed_fractions:
            if num_real_tokens <= int(rows * length * fraction):
                return int(rows * length * fraction)
        return None

    def max_rows(self, length: int) -> int:
        fitting = [rows for rows in self.batch_sizes if rows * length <= self.max_batch_tokens]
        return fitting[-1] if fitting else self.batch_sizes[0]


@dataclass
class _Job:
    """One RPC's inputs and where their vectors go."""

    token_ids: list[list[int]]
    future: concurrent.futures.Future
    token_type_ids: list[list[int]] | None = None  # per input, as long as its token ids
    vectors: list[np.ndarray | None] = field(default_factory=list)
    num_done: int = 0


class EmbeddingEngine(EngineThread):
    """Embeds token-id lists for every submission on one thread, in bucketed batched calls."""

    def __init__(self, forward: Callable, params, dimensions: int, buckets: EmbeddingBuckets,
                 static: str, pad_token_id: int = 0, max_pending_inputs: int = 4 * MAX_INPUTS,
                 uses_token_types: bool = False):
        """`static` names everything `forward` depends on besides its arguments (the model's
        config and pooling): it keys the stored executables (core/engine/executables.py).
        `uses_token_types`: `forward` takes token type ids after the mask (a cross-encoder's
        pair segments), and every submission brings them."""
        super().__init__("tandem-embed")
        self.dimensions = dimensions  # the model's embedding size
        self._static = static
        self.buckets = buckets
        self._params = params
        self._pad_token_id = pad_token_id
        self.num_compilations = 0
        self.compilations_at_warmup = 0
        self.uses_token_types = uses_token_types

        def traced(params, *arrays, num_packed_tokens):  # arrays: ids, mask[, token types]
            self.num_compilations += 1  # runs only while tracing
            if num_packed_tokens is None:
                return forward(params, *arrays)
            return forward(params, *arrays, num_packed_tokens)

        self._traced = traced
        self._forward = jax.jit(traced, static_argnames=("num_packed_tokens",))
        # the warm-up's executables: (rows, length, packed tokens or None) → forward
        self._executables: dict[tuple[int, int, int | None], Callable] = {}
        self.max_pending_inputs = max_pending_inputs  # queued inputs before OVERLOADED
        self._num_pending_inputs = 0  # submitted, not yet embedded nor dropped (under _lock)
        self._lock = threading.Lock()
        self._pending: list[tuple[_Job, int]] = []  # (job, input index) to embed, in order

    @property
    def compilations_after_warmup(self) -> int:
        return self.num_compilations - self.compilations_at_warmup

    @property
    def num_unfinished(self) -> int:
        with self._lock:
            return self._num_pending_inputs

    def stats(self) -> EngineStats:
        with self._lock:
            num_waiting = self._num_pending_inputs
        return EngineStats(num_waiting=num_waiting, num_running=0, kv_cache_usage=0.0,
                           num_kv_pages=0,
                           compilations_after_warmup=self.compilations_after_warmup)

    def warmup(self) -> None:
        """Compile every call shape (in parallel; loaded from the executable store when it has
        them), then run the smallest once."""
        shapes = self.buckets.shapes()
        num_arrays = 3 if self.uses_token_types else 2
        jobs = [executables.CompileJob(
            f"embedding {rows}×{length} packed {packed}",
            jax.jit(functools.partial(self._traced, num_packed_tokens=packed)),
            (self._params, *[np.zeros((rows, length), np.int32)] * num_arrays),
            self._static) for rows, length, packed in shapes]

        def report(index: int, job: executables.CompileJob, seconds: float, loaded: bool):
            log.info("embedding warm-up %d/%d: %s %s in %.2f s", index + 1, len(jobs), job.name,
                     "loaded" if loaded else "compiled", seconds)

        compiled = executables.compile_all(jobs, on_done=report)
        self._executables = dict(zip(shapes, compiled, strict=True))
        rows, length, packed = shapes[0]
        self._run([np.zeros((rows, length), np.int32)] * num_arrays, packed)
        self.compilations_at_warmup = self.num_compilations

    def submit(self, token_ids: list[list[int]],
               token_type_ids: list[list[int]] | None = None) -> concurrent.futures.Future:
        """A future of float32 [inputs, dimensions]; cancel it to drop the unstarted work.
        `token_type_ids` (one list per input, as long as its ids): required when the engine
        `uses_token_types`, refused otherwise. Raises Unavailable when shutting down,
        Overloaded when too many inputs wait."""
        if (token_type_ids is not None) != self.uses_token_types:
            raise ValueError("token_type_ids must be given exactly when the forward takes them")
        self._check_admitting()
        with self._lock:
            if self._num_pending_inputs + len(token_ids) > self.max_pending_inputs:
                raise Overloaded("too many embedding inputs queued; retry later",
                                 retry_after_s=1)
            if self._num_pending_inputs == 0:  # an idle engine's clock starts with this work
                self._note_progress()
            self._num_pending_inputs += len(token_ids)
        job = _Job(token_ids, concurrent.futures.Future(), token_type_ids,
                   [None] * len(token_ids))
        self._post(job)
        return job.future

    def _is_idle(self) -> bool:
        return not self._pending

    def _turn(self, items: list) -> None:
        """New jobs join the pending inputs (each job's longest first); one call runs."""
        self._pending += [(job, index) for job in items
                          for index in sorted(range(len(job.token_ids)),
                                              key=lambda i, job=job: -len(job.token_ids[i]))]
        kept = [(job, index) for job, index in self._pending if not job.future.done()]
        self._forget(len(self._pending) - len(kept))  # inputs of cancelled (or failed) RPCs
        if not kept:
            self._pending = []
            return
        batch, self._pending = self._next_call(kept)
        try:
            self._embed(batch)
        except Exception as exc:  # a bug: fail these RPCs, keep serving
            log.exception("embedding step failed")
            for job in {id(job): job for job, _ in batch}.values():
                _resolve(job.future, exc)
        finally:
            self._forget(len(batch))
            self._note_progress()

    def _next_call(self, pending: list[tuple[_Job, int]]):
        """The next call's inputs and what stays pending: the oldest input sets the length
        bucket, then inputs that fit it fill the call's rows, earlier RPCs first (so RPCs share
        calls, and a small RPC behind a huge one waits for one call, not for all of it)."""
        length = bucket(self.buckets.lengths, len(pending[0][0].token_ids[pending[0][1]]))
        max_rows = self.buckets.max_rows(length)
        batch, rest = [], []
        for job, index in pending:
            fits = len(batch) < max_rows and len(job.token_ids[index]) <= length
            (batch if fits else rest).append((job, index))
        return batch, rest

    def _embed(self, batch: list[tuple[_Job, int]]) -> None:
        length = bucket(self.buckets.lengths, max(len(job.token_ids[i]) for job, i in batch))
        rows = bucket(self.buckets.batch_sizes, len(batch))
        token_ids = np.full((rows, length), self._pad_token_id, np.int32)
        mask = np.zeros((rows, length), np.int32)
        types = np.zeros((rows, length), np.int32) if self.uses_token_types else None
        for row, (job, index) in enumerate(batch):
            ids = job.token_ids[index]
            token_ids[row, :len(ids)] = ids
            mask[row, :len(ids)] = 1
            if types is not None:
                types[row, :len(ids)] = job.token_type_ids[index]
        packed = self.buckets.packed_tokens(rows, length, int(mask.sum()))
        arrays = [token_ids, mask] if types is None else [token_ids, mask, types]
        vectors = self._run(arrays, packed)
        for row, (job, index) in enumerate(batch):
            job.vectors[index] = vectors[row]
            job.num_done += 1
            if job.num_done == len(job.token_ids):
                _resolve(job.future, np.stack(job.vectors))

    def _forget(self, num_inputs: int) -> None:
        with self._lock:
            self._num_pending_inputs -= num_inputs

    def _run(self, arrays: list[np.ndarray], packed: int | None) -> np.ndarray:
        """arrays: token ids, mask[, token types], each [rows, length]."""
        compiled = self._executables.get((*arrays[0].shape, packed))
        if compiled is not None:
            vectors = compiled(self._params, *arrays)
        else:  # not a warm-up shape: traced and compiled now (counted)
            vectors = self._forward(self._params, *arrays, num_packed_tokens=packed)
        return np.asarray(jax.device_get(vectors), np.float32)


def _resolve(future: concurrent.futures.Future, outcome) -> None:
    """Set a result or an exception unless the RPC cancelled the future meanwhile."""
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled: nobody is waiting

