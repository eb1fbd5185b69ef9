"""Per-row logits stages that run before temperature, and the device state they read.

Owns, in the pipeline's fixed order (each stage skipped with `lax.cond` when no row of the
call uses it — no work, no new shape):

1. `logit_bias` / `allowed_token_ids` / single-token bad words: one dense bias row per sequence
   (`RowState.bias`, built on the host once per admission), plus multi-token bad words whose
   prefix just matched the generated tokens (`RowInputs.banned_ids`, from the host each step);
2. repetition (HF / vLLM: over prompt and generated tokens), presence and frequency penalties
   (OpenAI: over generated tokens), from per-sequence token counts kept on device
   (`RowState.prompt_mask`, `RowState.output_counts`) and bumped inside the step;
3. `min_tokens`: EOS and stop ids masked while a sequence is short (`RowInputs.min_tokens_ids`).

A sequence that needs state holds a row slot (`Request.row_slot`) while it holds KV pages; the
row is rebuilt from its tokens when it is (re)admitted (`init_row`), so preemption, n > 1 and
the prefix cache cannot leave stale counts. Rows without state point at the scratch slot (the
last), whose bias is zero and whose parameters are neutral.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from core.engine.request import MAX_BANNED_IDS, MAX_MIN_TOKENS_IDS, SamplingParams, SequenceChunk


@jax.tree_util.register_dataclass
@dataclass
class RowState:
    """Per-sequence logits state on device, one row per slot (+ the scratch slot at the end)."""

    bias: jax.Array  # [slots + 1, v] float32: logit_bias, -inf for disallowed / bad tokens
    prompt_mask: jax.Array  # [slots + 1, v] bool: the token occurs in the prompt
    output_counts: jax.Array  # [slots + 1, v] int32: times the token was generated

    @classmethod
    def create(cls, num_slots: int, vocab_size: int) -> RowState:
        shape = (num_slots + 1, vocab_size)
        return cls(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.bool_),
                   jnp.zeros(shape, jnp.int32))


@jax.tree_util.register_dataclass
@dataclass
class RowInputs:
    """Per-row inputs of one call, each [b] unless noted (padding rows are neutral)."""

    slot: jax.Array  # int32: the row's RowState slot (the scratch slot when it has none)
    uses_bias: jax.Array  # bool: add the slot's bias row
    presence: jax.Array  # float32
    frequency: jax.Array  # float32
    repetition: jax.Array  # float32; 1 = off
    counts_token: jax.Array  # bool: the sampled token is generated (bump the slot's count)
    banned_ids: jax.Array  # [b, MAX_BANNED_IDS] int32, vocab size = none
    min_tokens_ids: jax.Array  # [b, MAX_MIN_TOKENS_IDS] int32, vocab size = none

    @classmethod
    def from_chunks(cls, chunks: list[SequenceChunk], num_rows: int, scratch_slot: int,
                    vocab_size: int) -> RowInputs:
        slot = np.full(num_rows, scratch_slot, np.int32)
        uses_bias = np.zeros(num_rows, np.bool_)
        presence, frequency = np.zeros(num_rows, np.float32), np.zeros(num_rows, np.float32)
        repetition = np.ones(num_rows, np.float32)
        counts_token = np.zeros(num_rows, np.bool_)
        banned = np.full((num_rows, MAX_BANNED_IDS), vocab_size, np.int32)
        min_tokens = np.full((num_rows, MAX_MIN_TOKENS_IDS), vocab_size, np.int32)
        for row, chunk in enumerate(chunks):
            params = chunk.sampling
            if chunk.row_slot is not None:
                slot[row] = chunk.row_slot
                uses_bias[row] = _has_bias_row(params)
                presence[row] = params.presence_penalty
                frequency[row] = params.frequency_penalty
                repetition[row] = params.repetition_penalty
                counts_token[row] = chunk.wants_sample
            banned[row, :len(chunk.banned_token_ids)] = chunk.banned_token_ids
            min_tokens[row, :len(chunk.min_tokens_ids)] = chunk.min_tokens_ids
        return cls(slot, uses_bias, presence, frequency, repetition, counts_token, banned,
                   min_tokens)


def _has_bias_row(params: SamplingParams) -> bool:
    return (bool(params.logit_bias) or params.allowed_token_ids is not None
            or any(len(word) == 1 for word in params.bad_words_token_ids))


def bias_row(params: SamplingParams, vocab_size: int) -> np.ndarray:
    """The dense [v] float32 row of stage 1's static part: logit_bias added, tokens outside
    allowed_token_ids and single-token bad words at -inf."""
    row = np.zeros(vocab_size, np.float32)
    for token_id, bias in params.logit_bias:
        row[token_id] += bias
    if params.allowed_token_ids is not None:
        allowed = np.zeros(vocab_size, np.bool_)
        allowed[list(params.allowed_token_ids)] = True
        row[~allowed] = -np.inf
    for word in params.bad_words_token_ids:
        if len(word) == 1:
            row[word[0]] = -np.inf
    return row


def init_row(state: RowState, slot: jax.Array, bias: jax.Array, token_ids: jax.Array,
             num_prompt_tokens: jax.Array, num_tokens: jax.Array) -> RowState:
    """Rebuild one slot from a sequence's tokens (token_ids [max_model_len], padded)."""
    vocab_size = state.bias.shape[-1]
    positions = jnp.arange(token_ids.shape[0])
    in_prompt = positions < jnp.minimum(num_prompt_tokens, num_tokens)
    generated = (positions >= num_prompt_tokens) & (positions < num_tokens)
    prompt_row = jnp.zeros(vocab_size, jnp.bool_).at[
        jnp.where(in_prompt, token_ids, vocab_size)].set(True, mode="drop")
    counts_row = jnp.zeros(vocab_size, jnp.int32).at[
        jnp.where(generated, token_ids, vocab_size)].add(1, mode="drop")
    return RowState(state.bias.at[slot].set(bias), state.prompt_mask.at[slot].set(prompt_row),
                    state.output_counts.at[slot].set(counts_row))


def _mask_ids(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """Set logits[row, ids[row, j]] to -inf (ids equal to the vocab size are padding)."""
    rows = jnp.arange(logits.shape[0])[:, None]
    return logits.at[rows, ids].set(-jnp.inf, mode="drop")


def apply_bias_and_bad_words(logits: jax.Array, rows: RowInputs, state: RowState) -> jax.Array:
    """Stage 1: logit_bias, allowed_token_ids, bad words."""
    logits = jax.lax.cond(
        jnp.any(rows.uses_bias),
        lambda x: x + jnp.where(rows.uses_bias[:, None], state.bias[rows.slot], 0.0),
        lambda x: x, logits)
    vocab_size = logits.shape[-1]
    return jax.lax.cond(jnp.any(rows.banned_ids < vocab_size),
                        lambda x: _mask_ids(x, rows.banned_ids), lambda x: x, logits)


def apply_penalties(logits: jax.Array, rows: RowInputs, state: RowState) -> jax.Array:
    """Stage 2 (vLLM's order): repetition over prompt and generated tokens, then frequency
    and presence over generated tokens."""
    def penalize(x):
        counts = state.output_counts[rows.slot]  # [b, v]
        generated = counts > 0
        seen = generated | state.prompt_mask[rows.slot]
        repetition = rows.repetition[:, None]
        x = jnp.where(seen, jnp.where(x > 0, x / repetition, x * repetition), x)
        x = x - rows.frequency[:, None] * counts.astype(jnp.float32)
        return x - rows.presence[:, None] * generated.astype(jnp.float32)

    uses = (rows.presence != 0) | (rows.frequency != 0) | (rows.repetition != 1)
    return jax.lax.cond(jnp.any(uses), penalize, lambda x: x, logits)


def apply_min_tokens(logits: jax.Array, rows: RowInputs) -> jax.Array:
    """Stage 3: EOS and stop ids masked for rows still under min_tokens."""
    vocab_size = logits.shape[-1]
    return jax.lax.cond(jnp.any(rows.min_tokens_ids < vocab_size),
                        lambda x: _mask_ids(x, rows.min_tokens_ids), lambda x: x, logits)


def count_sampled(state: RowState, rows: RowInputs, token_ids: jax.Array) -> RowState:
    """Bump the generated-token counts of the rows that sampled a real token."""
    counts = state.output_counts.at[rows.slot, token_ids].add(
        rows.counts_token.astype(jnp.int32))
    return RowState(state.bias, state.prompt_mask, counts)
