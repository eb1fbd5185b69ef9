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
    (the layouts attention reads without transposing; see core/models/llama.py)."""

    keys: list[jax.Array]
    values: list[jax.Array]

    @classmethod
    def create(cls, config: ModelConfig, num_pages: int, page_size: int, dtype) -> KVPages:
        k, h = config.num_kv_heads, config.head_dim
        return cls(keys=[jnp.zeros((num_pages, k, h, page_size), dtype)
                         for _ in range(config.num_layers)],
                   values=[jnp.zeros((num_pages, k, page_size, h), dtype)
                           for _ in range(config.num_layers)])


def kv_bytes_per_token(config: ModelConfig, dtype_bytes: int) -> int:
    """Bytes of keys and values one token occupies across all layers."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * dtype_bytes


