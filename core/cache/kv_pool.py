"""The KV pool on device: per-layer arrays of fixed-size pages (the pages `PageAllocator` hands
out, plus one scratch page).

Owns: `KVPages`, the pytree the jitted step takes, updates in place and returns (it is donated),
the pool's layout and decode path (`paged_attention_kind`: on CPU the gather layout, read by
Tandem's paged decode-attention kernel where one is built (core/kernels/) or else by XLA's
gathers and dots; JAX's Pallas paged-attention kernel on GPU/TPU) and its element type, and the
pool's size arithmetic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from core.model_config import ModelConfig


@jax.tree_util.register_dataclass
@dataclass
class KVPages:
    """Per-layer pools: keys [num_pages, k, h, page_size], values [num_pages, k, page_size, h]
    (the layouts attention reads without transposing; see core/models/llama.py). A bfloat16
    pool is stored as its uint16 bits (`storage_dtype`): XLA:CPU scatters bf16 through a float32
    copy of the whole pool (~100 ms a layer), uint16 in place."""

    keys: list[jax.Array]
    values: list[jax.Array]
    # "gather" / "cpu-kernel" (the CPU layouts above; decode through XLA's gathers or through
    # core/kernels/) or "pallas"/"pallas-interpret": keys and values both
    # [k, num_pages, page_size, h], the layout of JAX's Pallas paged-attention kernels
    kind: str = field(default="gather", metadata={"static": True})

    @classmethod
    def create(cls, config: ModelConfig, num_pages: int, page_size: int, dtype,
               kind: str | None = None) -> KVPages:
        k, h, kind = config.num_kv_heads, config.head_dim, kind or paged_attention_kind()
        dtype = storage_dtype(dtype, kind)
        if gather_layout(kind):
            key_shape, value_shape = (num_pages, k, h, page_size), (num_pages, k, page_size, h)
        else:
            key_shape = value_shape = (k, num_pages, page_size, h)
        return cls(keys=[jnp.zeros(key_shape, dtype) for _ in range(config.num_layers)],
                   values=[jnp.zeros(value_shape, dtype) for _ in range(config.num_layers)],
                   kind=kind)


PAGED_ATTENTION_KINDS = ("cpu-kernel", "gather", "pallas", "pallas-interpret")


def gather_layout(kind: str) -> bool:
    """Whether pools of `kind` lie in the CPU layouts (keys [P, k, h, c], values [P, k, c, h])."""
    return kind in ("gather", "cpu-kernel")


def paged_attention_kind(backend: str | None = None) -> str:
    """How decode attends to the pool: "pallas" (JAX's Pallas paged-attention kernel) on GPU
    and TPU; on CPU "cpu-kernel" (Tandem's kernel, core/kernels/, where a build for this CPU
    loads) or else "gather" (pages gathered, then XLA's dots). TANDEM_PAGED_ATTENTION overrides
    it ("pallas-interpret" runs the Pallas kernel's interpreter on CPU, for tests)."""
    chosen = os.environ.get("TANDEM_PAGED_ATTENTION", "")
    if chosen:
        if chosen not in PAGED_ATTENTION_KINDS:
            raise ValueError(f"TANDEM_PAGED_ATTENTION={chosen!r}: one of {PAGED_ATTENTION_KINDS}")
        if chosen == "cpu-kernel":
            from core.kernels.cpu import decode_attention_kernel

            if decode_attention_kernel() is None:  # registers the kernel's target with XLA
                raise ValueError("TANDEM_PAGED_ATTENTION=cpu-kernel: no build of the kernel "
                                 "loads on this CPU (see core/kernels/cpu.py)")
        return chosen
    if (backend or jax.default_backend()) != "cpu":
        return "pallas"
    from core.kernels.cpu import decode_attention_kernel

    return "cpu-kernel" if decode_attention_kernel() else "gather"


def storage_dtype(dtype, kind: str = "gather") -> jnp.dtype:
    """The element type a pool of `dtype` values is stored in (bf16 → its uint16 bits on the
    CPU path; the Pallas kernels read bf16 itself)."""
    bits = jnp.dtype(dtype) == jnp.bfloat16 and gather_layout(kind)
    return jnp.dtype(jnp.uint16) if bits else jnp.dtype(dtype)


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


