"""On-device sampler: the per-row stages of core/engine/logits_processors.py, the grammar bitmask,
then temperature, top-k, top-p, min-p, greedy, logprobs.

Owns: picking one token per batch row from float32 logits inside the jitted step. Each row's
randomness is `fold_in(key(seed), choice index, position)`, so a seeded request draws the same
tokens whatever else shares its batch. Logprobs are reported from the unmodified distribution
(as vLLM does).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from core.engine import logits_processors as processors
from core.engine.request import SamplingParams
from core.structured.bitmask import apply_token_bitmask
from tandem.limits import MAX_TOP_LOGPROBS  # the sampler always computes this many


@jax.tree_util.register_dataclass
@dataclass
class SamplingArrays:
    """Per-row sampling parameters as device arrays, each [b]."""

    temperature: jax.Array  # float32; 0 = greedy
    top_p: jax.Array  # float32
    top_k: jax.Array  # int32; 0 = off
    min_p: jax.Array  # float32
    seed: jax.Array  # uint32 (low half of the 64-bit seed)
    seed_high: jax.Array  # uint32 (high half)
    choice_index: jax.Array  # uint32: sibling choices of one seeded request draw differently

    @classmethod
    def from_params(cls, params: list[SamplingParams], batch_size: int) -> SamplingArrays:
        """Pad to batch_size with greedy rows."""
        padding = [SamplingParams(temperature=0.0, seed=0)] * (batch_size - len(params))
        rows = list(params) + padding
        seeds = np.array([p.seed or 0 for p in rows], dtype=np.uint64)
        return cls(
            temperature=np.array([p.temperature for p in rows], np.float32),
            top_p=np.array([p.top_p for p in rows], np.float32),
            top_k=np.array([p.top_k for p in rows], np.int32),
            min_p=np.array([p.min_p for p in rows], np.float32),
            seed=(seeds & 0xFFFFFFFF).astype(np.uint32),
            seed_high=(seeds >> 32).astype(np.uint32),
            choice_index=np.array([p.choice_index for p in rows], np.uint32),
        )


@jax.tree_util.register_dataclass
@dataclass
class SampleResult:
    token_ids: jax.Array  # [b] int32
    logprobs: jax.Array  # [b] float32, of the chosen tokens
    top_ids: jax.Array  # [b, MAX_TOP_LOGPROBS] int32
    top_logprobs: jax.Array  # [b, MAX_TOP_LOGPROBS] float32


def _scaled(logits: jax.Array, params: SamplingArrays) -> jax.Array:
    temperature = jnp.where(params.temperature > 0, params.temperature, 1.0)
    return logits / temperature[:, None]


def _min_p_threshold(top: jax.Array, params: SamplingArrays) -> jax.Array:
    """[b, 1] logit threshold of min-p given each row's top logit (-inf where min-p is off)."""
    threshold = top + jnp.log(jnp.maximum(params.min_p[:, None], 1e-30))
    return jnp.where(params.min_p[:, None] > 0, threshold, -jnp.inf)


def _min_p_logits(logits: jax.Array, params: SamplingArrays) -> jax.Array:
    """Temperature-scaled logits with min-p exclusions: all that rows without top-k / top-p
    need, without sorting the vocabulary (equal to `_filtered_logits` for such rows)."""
    scaled = _scaled(logits, params)
    threshold = _min_p_threshold(jnp.max(scaled, axis=-1, keepdims=True), params)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def _sortable_keys(values: jax.Array) -> jax.Array:
    """float32 → int32 keys in the same order (negatives' magnitude bits flipped)."""
    bits = jax.lax.bitcast_convert_type(values, jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _bisect_keys(predicate, num_rows: int) -> jax.Array:
    """Per row, the smallest int32 key u with predicate(u) [b] true, for a predicate monotone
    in u (false … false true … true, true at the largest key): 32 halvings of the key range,
    each one pass over the rows. Exact, and far cheaper than sorting a vocabulary on XLA:CPU
    (a [32, 32000] sort took ~190 ms there; this is a few ms)."""
    def halve(_, bounds):
        low, high = bounds  # the answer lies in [low, high]
        middle = (low >> 1) + (high >> 1) + (low & high & 1)  # floor((low + high) / 2)
        holds = predicate(middle)
        return jnp.where(holds, low, middle + 1), jnp.where(holds, middle, high)

    low = jnp.full((num_rows,), jnp.iinfo(jnp.int32).min, jnp.int32)
    high = jnp.full((num_rows,), jnp.iinfo(jnp.int32).max, jnp.int32)
    return jax.lax.fori_loop(0, 32, halve, (low, high))[0]


def _filtered_logits(logits: jax.Array, params: SamplingArrays) -> jax.Array:
    """Temperature-scaled logits with top-k / top-p / min-p exclusions set to -inf.

    Without sorting: the k-th largest logit and the top-p cut are found by bisection over the
    logits' order-preserving int32 keys. The kept sets are those of the sorted definition (ties
    with the last kept token are kept): top-k keeps logits ≥ the k-th largest; top-p, over the
    top-k tokens renormalized (Hugging Face's and vLLM's order), keeps logits ≥ the smallest
    logit whose strictly larger tokens hold less than top_p of the mass (so the top token is
    always kept); min-p keeps logits ≥ top + log(min_p)."""
    num_rows, vocab_size = logits.shape
    scaled = _scaled(logits, params)
    keys = _sortable_keys(scaled)
    lowest = jnp.full((num_rows,), jnp.iinfo(jnp.int32).min, jnp.int32)
    k = jnp.where(params.top_k > 0, jnp.minimum(params.top_k, vocab_size), vocab_size)

    def kth_key(keys):  # the largest u with at least k keys ≥ u: the k-th largest key
        fewer_than_k = lambda u: jnp.sum(keys >= u[:, None], axis=-1) < k  # noqa: E731
        return _bisect_keys(fewer_than_k, num_rows) - 1

    uses_top_k = jnp.any(params.top_k > 0)
    k_key = jax.lax.cond(uses_top_k, kth_key, lambda _: lowest, keys)
    top = jnp.max(scaled, axis=-1, keepdims=True)
    in_top_k = keys >= k_key[:, None]
    weights = jnp.where(in_top_k, jnp.exp(scaled - top), 0.0)
    probs = weights / jnp.sum(weights, axis=-1, keepdims=True)

    def top_p_key(keys):  # the smallest u whose strictly larger tokens hold < top_p
        mass_above = lambda u: jnp.sum(jnp.where(keys > u[:, None], probs, 0.0), axis=-1)  # noqa: E731
        return _bisect_keys(lambda u: mass_above(u) < params.top_p, num_rows)

    uses_top_p = params.top_p < 1
    p_key = jax.lax.cond(jnp.any(uses_top_p), top_p_key, lambda _: lowest, keys)
    p_key = jnp.where(uses_top_p, p_key, lowest)
    kept = (keys >= jnp.maximum(k_key, p_key)[:, None]) & (scaled >= _min_p_threshold(top, params))
    return jnp.where(kept, scaled, -jnp.inf)


def argmax_last(logits: jax.Array, block_size: int = 128) -> jax.Array:
    """jnp.argmax over the last axis (first maximum wins), in two levels: the block holding the
    maximum, then the index inside it — several times faster than XLA:CPU's one-pass argmax
    over a 32k vocabulary."""
    rows, vocab_size = logits.shape
    padded_size = -(-vocab_size // block_size) * block_size
    padded = jnp.pad(logits, ((0, 0), (0, padded_size - vocab_size)), constant_values=-jnp.inf)
    blocks = padded.reshape(rows, padded_size // block_size, block_size)
    best_block = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1)  # [b]
    inside = jnp.take_along_axis(blocks, best_block[:, None, None], axis=1)[:, 0]  # [b, block]
    return best_block * block_size + jnp.argmax(inside, axis=-1)


def sample(logits: jax.Array, params: SamplingArrays, positions: jax.Array,
           wants_logprobs: jax.Array | bool = True,
           rows: processors.RowInputs | None = None,
           row_state: processors.RowState | None = None,
           token_bitmask: jax.Array | None = None,
           has_bitmask: jax.Array | bool = False) -> SampleResult:
    """logits [b, v] float32, positions [b] (of the token being produced) → one token per row.

    The pipeline, in order: logit_bias / allowed_token_ids / bad words → penalties →
    min_tokens (core/engine/logits_processors.py, from `rows` and the device `row_state`) → grammar
    bitmask (`token_bitmask` [b, ceil(v / 32)] int32 from llguidance; applied only when
    `has_bitmask`) → temperature → top-k → top-p → min-p → sample. Each stage is skipped at run
    time (`lax.cond`, no recompiling) when no row uses it: calls without a constrained row never
    unpack a mask, all-greedy batches never sort or draw, and batches nobody asked logprobs for
    never run top-k. Logprobs are those of the raw `logits`, before any stage."""
    raw_logits = logits
    # -- the per-row stages before temperature, in the pipeline's order (logits_processors) --
    if rows is not None:
        logits = processors.apply_bias_and_bad_words(logits, rows, row_state)
        logits = processors.apply_penalties(logits, rows, row_state)
        logits = processors.apply_min_tokens(logits, rows)
    if token_bitmask is not None:
        logits = jax.lax.cond(has_bitmask, apply_token_bitmask, lambda x, _: x,
                              logits, token_bitmask)
    # -- end of the per-row stages ---------------------------------------------------------

    def draw(logits):
        keys = _row_keys(params, positions)
        return jax.vmap(lambda key, row: jax.random.categorical(key, row))(
            keys, _cut_logits(logits, params))

    greedy = argmax_last(logits)
    is_sampled = params.temperature > 0
    drawn = jax.lax.cond(jnp.any(is_sampled), draw, lambda _: greedy, logits)
    token_ids = jnp.where(is_sampled, drawn, greedy).astype(jnp.int32)
    logprobs_all = jax.nn.log_softmax(raw_logits, axis=-1)
    chosen = jnp.take_along_axis(logprobs_all, token_ids[:, None], axis=-1)[:, 0]
    num_top = min(MAX_TOP_LOGPROBS, raw_logits.shape[-1])

    def top(logprobs_all):
        values, ids = jax.lax.top_k(logprobs_all, num_top)
        return values, ids.astype(jnp.int32)

    def no_top(logprobs_all):
        rows = logprobs_all.shape[0]
        return jnp.zeros((rows, num_top), jnp.float32), jnp.zeros((rows, num_top), jnp.int32)

    top_logprobs, top_ids = jax.lax.cond(wants_logprobs, top, no_top, logprobs_all)
    return SampleResult(token_ids, chosen, top_ids, top_logprobs)


def _row_keys(params: SamplingArrays, positions: jax.Array) -> jax.Array:
    """Each row's key: fold_in(key(seed), seed high half, choice index, position)."""
    def row_key(seed, seed_high, choice_index, position):
        key = jax.random.fold_in(jax.random.key(seed), seed_high)
        return jax.random.fold_in(jax.random.fold_in(key, choice_index), position)

    return jax.vmap(row_key)(params.seed, params.seed_high, params.choice_index, positions)


def _cut_logits(logits: jax.Array, params: SamplingArrays) -> jax.Array:
    """Temperature-scaled logits with the top-k / top-p / min-p exclusions at -inf (the costly
    cuts only when a row uses one)."""
    needs_cut = jnp.any((params.top_k > 0) | (params.top_p < 1))
    return jax.lax.cond(needs_cut, _filtered_logits, _min_p_logits, logits, params)


@jax.tree_util.register_dataclass
@dataclass
class VerifyResult:
    """Per position of a verified chunk (rows flattened: [rows × positions])."""

    accepted: jax.Array  # [n] bool: the draft token at this position is accepted
    token_ids: jax.Array  # [n] int32: the token emitted here if its draft is rejected, or
    # after the last draft (the bonus token)
    logprobs: jax.Array  # [n] float32: raw logprob of the token emitted here (draft or not)
    top_ids: jax.Array  # [n, MAX_TOP_LOGPROBS] int32
    top_logprobs: jax.Array  # [n, MAX_TOP_LOGPROBS] float32


def verify_sample(logits: jax.Array, params: SamplingArrays, positions: jax.Array,
                  draft_ids: jax.Array, wants_logprobs: jax.Array | bool) -> VerifyResult:
    """Speculation's verification: logits [n, v] of every position of the verified chunks,
    draft_ids [n] the draft token each position's next token is checked against (-1: none,
    sample as usual). A deterministic (one-hot) draft x is accepted with probability p(x) under
    the row's temperature / top-k / top-p / min-p distribution p; on rejection the token is
    drawn from p with x removed, renormalized — exact rejection sampling, so the output has
    the distribution of plain sampling. Greedy rows accept x iff it is the argmax, and emit the
    argmax otherwise: the tokens of greedy decoding. Only rows without per-row stages come here
    (core/engine/speculative.py). Logprobs are the raw logits' (as `sample`)."""
    has_draft = draft_ids >= 0
    draft = jnp.where(has_draft, draft_ids, 0)
    greedy = argmax_last(logits)
    is_sampled = params.temperature > 0

    def draw(logits):
        keys = jax.vmap(lambda key: jax.random.split(key))(_row_keys(params, positions))
        cut = _cut_logits(logits, params)
        probability = jnp.take_along_axis(jax.nn.softmax(cut, axis=-1), draft[:, None],
                                          axis=-1)[:, 0]
        uniform = jax.vmap(jax.random.uniform)(keys[:, 0])
        residual = jnp.where(has_draft[:, None] & (jnp.arange(cut.shape[-1]) == draft[:, None]),
                             -jnp.inf, cut)
        drawn = jax.vmap(jax.random.categorical)(keys[:, 1], residual)
        return uniform < probability, drawn.astype(jnp.int32)

    def no_draw(logits):
        return jnp.zeros(logits.shape[0], jnp.bool_), greedy.astype(jnp.int32)

    sampled_accept, drawn = jax.lax.cond(jnp.any(is_sampled), draw, no_draw, logits)
    accepted = has_draft & jnp.where(is_sampled, sampled_accept, greedy == draft)
    token_ids = jnp.where(is_sampled, drawn, greedy).astype(jnp.int32)
    logprobs_all = jax.nn.log_softmax(logits, axis=-1)
    emitted = jnp.where(accepted, draft, token_ids)
    chosen = jnp.take_along_axis(logprobs_all, emitted[:, None], axis=-1)[:, 0]
    num_top = min(MAX_TOP_LOGPROBS, logits.shape[-1])
    top_logprobs, top_ids = jax.lax.cond(
        wants_logprobs, lambda x: tuple(jax.lax.top_k(x, num_top)),
        lambda x: (jnp.zeros((x.shape[0], num_top), jnp.float32),
                   jnp.zeros((x.shape[0], num_top), jnp.int32)), logprobs_all)
    return VerifyResult(accepted, token_ids, chosen, top_ids.astype(jnp.int32), top_logprobs)
