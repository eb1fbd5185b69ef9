"""The KV pool on device: per-layer arrays of fixed-size pages (the pages `PageAllocator` hands
out, plus one scratch page).

Owns: `KVPages`, the pytree the jitted step takes, updates in place and returns (it is donated),
and the pool's size arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from core.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclass
class KVPages:
    """Per-layer pools: keys [num_pages, k, h, page_size], values [num_pages, k, page_size, h]
    (the layouts attention reads without transposing; see core/models/llama.py). A bfloat16
    pool is stored as its uint16 bits (`storage_dtype`): XLA:CPU scatters bf16 through a float32
    copy of the whole pool (~100 ms a layer), uint16 in place."""

    keys: list[jax.Array]
    values: list[jax.Array]

    @classmethod
    def create(cls, config: ModelConfig, num_pages: int, page_size: int, dtype) -> KVPages:
        k, h = config.num_kv_heads, config.head_dim
        dtype = storage_dtype(dtype)
        return cls(keys=[jnp.zeros((num_pages, k, h, page_size), dtype)
                         for _ in range(config.num_layers)],
                   values=[jnp.zeros((num_pages, k, page_size, h), dtype)
                           for _ in range(config.num_layers)])


def storage_dtype(dtype) -> jnp.dtype:
    """The element type a pool of `dtype` values is stored in (bf16 → its uint16 bits)."""
    return jnp.dtype(jnp.uint16) if jnp.dtype(dtype) == jnp.bfloat16 else jnp.dtype(dtype)


def to_storage(values: jax.Array, pool: jax.Array) -> jax.Array:
    """New keys/values → the pool's element type (bf16 bits for a uint16 pool)."""
    if pool.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(values.astype(jnp.bfloat16), jnp.uint16)
    return values.astype(pool.dtype)


def to_float32(stored: jax.Array) -> jax.Array:
    """Pool elements (e.g. gathered pages) → float32; bf16 bits widen exactly by a shift."""
    if stored.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(stored.astype(jnp.uint32) << 16, jnp.float32)
    return stored.astype(jnp.float32)


def kv_bytes_per_token(config: ModelConfig, dtype_bytes: int) -> int:
    """Bytes of keys and values one token occupies across all layers."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * dtype_bytes


