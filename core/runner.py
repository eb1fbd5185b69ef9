"""Scheduler output → bucketed arrays → one jitted model step → sampled tokens.

Owns: the model's parameters and KV cache on device, the jitted step (forward, last-token
logits, on-device sampling) with the cache donated, padding batches to the shape buckets,
compiling every bucket at warm-up, and counting compilations.
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core.config import EngineConfig, ModelConfig
from core.models.llama import PADDING_POSITION, KVCache, LlamaModel
from core.request import BatchRow, SamplingParams, ScheduledBatch
from core.sampling import SampleResult, SamplingArrays, sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepOutput:
    """Host copies of the sampled results for the batch's rows, in row order."""

    token_ids: np.ndarray  # [rows] int
    logprobs: np.ndarray  # [rows] float, of the chosen tokens
    top_ids: np.ndarray  # [rows, MAX_TOP_LOGPROBS]
    top_logprobs: np.ndarray  # [rows, MAX_TOP_LOGPROBS]


class ModelRunner:
    def __init__(self, model: LlamaModel, config: ModelConfig, engine_config: EngineConfig):
        self.config = config
        self.engine_config = engine_config
        self._graphdef, self._state = nnx.split(model)
        dtype = jnp.bfloat16 if engine_config.dtype == "bfloat16" else jnp.float32
        self._cache = KVCache.create(config, engine_config.max_num_seqs,
                                     engine_config.max_model_len, dtype)
        self._prefill_buckets = engine_config.prefill_buckets()
        self._decode_buckets = engine_config.decode_buckets()
        self.num_compilations = 0  # traces of the step function (one per new shape)
        self.compilations_at_warmup = 0
        self._step = jax.jit(self._step_fn, donate_argnames=("cache",))

    @property
    def compilations_after_warmup(self) -> int:
        return self.num_compilations - self.compilations_at_warmup

    def _step_fn(self, state, cache, token_ids, positions, slot_ids, last_index, sampling):
        self.num_compilations += 1  # runs only while tracing
        model = nnx.merge(self._graphdef, state)
        hidden, cache = model(token_ids, positions, slot_ids, cache)  # [b, t, d]
        rows = jnp.arange(token_ids.shape[0])
        logits = model.logits(hidden[rows, last_index])  # [b, v]
        result = sample(logits, sampling, positions[rows, last_index] + 1)
        return result, cache

    def execute(self, batch: ScheduledBatch) -> StepOutput:
        rows = batch.rows
        if batch.is_prefill:
            num_rows, num_tokens = 1, _bucket(self._prefill_buckets, len(rows[0].token_ids))
        else:
            num_rows, num_tokens = _bucket(self._decode_buckets, len(rows)), 1
        token_ids = np.zeros((num_rows, num_tokens), np.int32)
        positions = np.full((num_rows, num_tokens), PADDING_POSITION, np.int32)
        slot_ids = np.zeros((num_rows,), np.int32)
        last_index = np.zeros((num_rows,), np.int32)
        for i, row in enumerate(rows):
            length = len(row.token_ids)
            token_ids[i, :length] = row.token_ids
            positions[i, :length] = np.arange(row.start_position, row.start_position + length)
            slot_ids[i] = row.slot_id
            last_index[i] = length - 1
        sampling = SamplingArrays.from_params([row.sampling for row in rows], num_rows)
        result, self._cache = self._step(self._state, self._cache, token_ids, positions,
                                         slot_ids, last_index, sampling)
        return _to_host(result, len(rows))

    def warmup(self) -> None:
        """Compile every (batch, length) bucket once; the step counter starts after this."""
        greedy = SamplingParams(temperature=0.0, seed=0)
        shapes = [(1, t) for t in self._prefill_buckets] + [(b, 1) for b in self._decode_buckets]
        for index, (num_rows, num_tokens) in enumerate(shapes, start=1):
            started = time.perf_counter()
            rows = tuple(BatchRow(slot_id=i, token_ids=(0,) * num_tokens, start_position=0,
                                  sampling=greedy) for i in range(num_rows))
            self.execute(ScheduledBatch(rows=rows, is_prefill=num_tokens > 1))
            log.info("warm-up %d/%d: batch %d × %d tokens compiled in %.2f s", index, len(shapes),
                     num_rows, num_tokens, time.perf_counter() - started)
        self.compilations_at_warmup = self.num_compilations


def _bucket(buckets: tuple[int, ...], size: int) -> int:
    index = bisect.bisect_left(buckets, size)
    if index == len(buckets):
        raise ValueError(f"{size} exceeds the largest bucket {buckets[-1]}")
    return buckets[index]


def _to_host(result: SampleResult, num_rows: int) -> StepOutput:
    token_ids, logprobs, top_ids, top_logprobs = jax.device_get(
        (result.token_ids, result.logprobs, result.top_ids, result.top_logprobs))
    return StepOutput(token_ids[:num_rows], logprobs[:num_rows], top_ids[:num_rows],
                      top_logprobs[:num_rows])
