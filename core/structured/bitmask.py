"""The grammar stage of the on-device logits pipeline: a packed token bitmask applied to logits.

Owns: `apply_token_bitmask`, which unpacks llguidance's int32 bitmask (bit j of word i allows
token 32·i + j) with shifts and sets the logits of disallowed tokens to -inf. A row whose words
are all -1 (every bit set) passes through unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_token_bitmask(logits: jax.Array, bitmask: jax.Array) -> jax.Array:
    """logits [b, v] float32, bitmask [b, ceil(v / 32)] int32 → logits with -inf where a bit
    is clear (ids past v, the padding of the last word, are ignored)."""
    rows, vocab_size = logits.shape
    shifts = jnp.arange(32, dtype=jnp.int32)
    bits = jax.lax.shift_right_logical(bitmask[:, :, None], shifts[None, None, :]) & 1  # [b,w,32]
    allowed = bits.reshape(rows, -1)[:, :vocab_size] == 1  # [b, v]
    return jnp.where(allowed, logits, -jnp.inf)
