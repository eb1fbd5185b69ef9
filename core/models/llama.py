"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) in Flax NNX.

Owns: the forward pass from token ids to hidden states and logits, RoPE (plain, linear and
llama3 scaling), GQA attention over a KV cache pytree (with Mistral's sliding window), and the
paged KV pool. Reads top-down: config → helpers → layers → model.

Einsum letters: b batch, t new tokens, s cached positions, d model width, n query heads,
k key/value heads, g query heads per kv head, h head width, f MLP width, v vocabulary.
The KV cache is a plain pytree passed in and returned (donated by the caller's jit): one pool
per layer of shape [pages, page_size, k, h] (`core.cache.pages.KVPages`). Each batch row has a
page table [p] of page ids in position order: token position `i` lives in page
`table[i // page_size]` at offset `i % page_size`. A row writes its new tokens' keys and values
into its pages, then attends to the pages of its table (p·page_size keys, masked by position).
The pool's last page is scratch: padding tokens write there (an in-bounds scatter updates the
donated pool in place; an out-of-bounds "drop" made XLA copy the pool for single-row batches),
and no page table ever lists it.
"""

from __future__ import annotations

import math
import jax
import jax.numpy as jnp
from flax import nnx

from core.cache.pages import KVPages
from core.config import ModelConfig, RopeScaling

PADDING_POSITION = -1  # position of padding tokens: never written to the cache, never attended


# ---------------------------------------------------------------------------------------------
# Helpers


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight (as Hugging Face does)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * x32.astype(x.dtype)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
    """[h/2] inverse frequencies, with linear or llama3 scaling applied."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate [b, t, heads, h] by positions [b, t] (half-split layout, as Hugging Face)."""
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]  # [b, t, h/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], dtype, scale: float = 0.02) -> nnx.Param:
    return nnx.Param(scale * jax.random.normal(rngs.params(), shape, dtype))


# ---------------------------------------------------------------------------------------------
# Layers


class RMSNorm(nnx.Module):
    def __init__(self, width: int, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((width,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.weight[...], self.eps)


class Attention(nnx.Module):
    def __init__(self, config: ModelConfig, dtype, rngs: nnx.Rngs):
        d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = _param(rngs, (d, n, h), dtype)
        self.k_proj = _param(rngs, (d, k, h), dtype)
        self.v_proj = _param(rngs, (d, k, h), dtype)
        self.o_proj = _param(rngs, (n, h, d), dtype)
        self.qkv_bias = config.qkv_bias
        if config.qkv_bias:
            self.q_bias = nnx.Param(jnp.zeros((n, h), dtype))
            self.k_bias = nnx.Param(jnp.zeros((k, h), dtype))
            self.v_bias = nnx.Param(jnp.zeros((k, h), dtype))
        self.o_bias = nnx.Param(jnp.zeros((d,), dtype)) if config.o_bias else None
        self.num_groups = n // k
        self.sliding_window = config.sliding_window
        self.scale = h ** -0.5

    def __call__(self, x, positions, page_table, inv_freq, pool_keys, pool_values):
        """x [b, t, d], positions [b, t], page_table [b, p] → (out [b, t, d], updated pools)."""
        q = jnp.einsum("btd,dnh->btnh", x, self.q_proj[...])
        key = jnp.einsum("btd,dkh->btkh", x, self.k_proj[...])
        value = jnp.einsum("btd,dkh->btkh", x, self.v_proj[...])
        if self.qkv_bias:
            q, key, value = q + self.q_bias[...], key + self.k_bias[...], value + self.v_bias[...]
        q, key = apply_rope(q, positions, inv_freq), apply_rope(key, positions, inv_freq)

        num_pages, page_size, k, h = pool_keys.shape
        valid = positions >= 0
        page_index = jnp.where(valid, positions, 0) // page_size  # [b, t]
        page_ids = jnp.take_along_axis(page_table, page_index, axis=1)
        write_at = page_ids * page_size + jnp.where(valid, positions, 0) % page_size
        write_at = jnp.where(valid, write_at, (num_pages - 1) * page_size)  # padding: scratch
        flat_shape = (num_pages * page_size, k, h)
        pool_keys = pool_keys.reshape(flat_shape).at[write_at].set(
            key.astype(pool_keys.dtype), mode="promise_in_bounds").reshape(pool_keys.shape)
        pool_values = pool_values.reshape(flat_shape).at[write_at].set(
            value.astype(pool_values.dtype), mode="promise_in_bounds").reshape(pool_values.shape)
        b, p = page_table.shape
        keys = pool_keys[page_table].reshape(b, p * page_size, k, h)  # [b, s, k, h]
        values = pool_values[page_table].reshape(b, p * page_size, k, h)
        max_len = p * page_size

        b, t, n, h = q.shape
        q = q.reshape(b, t, n // self.num_groups, self.num_groups, h)
        scores = jnp.einsum("btkgh,bskh->bkgts", q, keys, preferred_element_type=jnp.float32)
        scores = scores * self.scale
        key_positions = jnp.arange(max_len)[None, None, :]  # [1, 1, s]
        query_positions = positions[:, :, None]  # [b, t, 1]
        visible = (key_positions <= query_positions) & (query_positions >= 0)
        if self.sliding_window is not None:
            visible &= query_positions - key_positions < self.sliding_window
        scores = jnp.where(visible[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", weights, values).reshape(b, t, n, h)
        out = jnp.einsum("btnh,nhd->btd", out, self.o_proj[...])
        if self.o_bias is not None:
            out = out + self.o_bias[...]
        return out, pool_keys, pool_values


class MLP(nnx.Module):
    def __init__(self, config: ModelConfig, dtype, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = _param(rngs, (d, f), dtype)
        self.up_proj = _param(rngs, (d, f), dtype)
        self.down_proj = _param(rngs, (f, d), dtype)
        if config.mlp_bias:
            self.gate_bias = nnx.Param(jnp.zeros((f,), dtype))
            self.up_bias = nnx.Param(jnp.zeros((f,), dtype))
            self.down_bias = nnx.Param(jnp.zeros((d,), dtype))
        self.mlp_bias = config.mlp_bias

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jnp.einsum("btd,df->btf", x, self.gate_proj[...])
        up = jnp.einsum("btd,df->btf", x, self.up_proj[...])
        if self.mlp_bias:
            gate, up = gate + self.gate_bias[...], up + self.up_bias[...]
        out = jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, self.down_proj[...])
        return out + self.down_bias[...] if self.mlp_bias else out


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, dtype, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.mlp = MLP(config, dtype, rngs)

    def __call__(self, x, positions, page_table, inv_freq, pool_keys, pool_values):
        attn_out, pool_keys, pool_values = self.self_attn(
            self.input_layernorm(x), positions, page_table, inv_freq, pool_keys, pool_values)
        x = x + attn_out
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, pool_keys, pool_values


# ---------------------------------------------------------------------------------------------
# Model


class LlamaModel(nnx.Module):
    """Token ids → hidden states (`__call__`) → float32 logits (`logits`)."""

    def __init__(self, config: ModelConfig, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.config = config
        self.embed_tokens = _param(rngs, (config.vocab_size, config.hidden_size), dtype)
        self.layers = nnx.List([DecoderLayer(config, dtype, rngs)
                                for _ in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.lm_head = (None if config.tie_word_embeddings
                        else _param(rngs, (config.hidden_size, config.vocab_size), dtype))

    def __call__(self, token_ids: jax.Array, positions: jax.Array, page_table: jax.Array,
                 pages: KVPages) -> tuple[jax.Array, KVPages]:
        """token_ids, positions [b, t] (PADDING_POSITION for padding), page_table [b, p] →
        (final-normed hidden states [b, t, d], updated pages)."""
        inv_freq = rope_inverse_frequencies(self.config.head_dim, self.config.rope_theta,
                                            self.config.rope_scaling)
        x = self.embed_tokens[...][token_ids]
        new_keys, new_values = [], []
        for layer, pool_keys, pool_values in zip(self.layers, pages.keys, pages.values,
                                                strict=True):
            x, pool_keys, pool_values = layer(x, positions, page_table, inv_freq,
                                              pool_keys, pool_values)
            new_keys.append(pool_keys)
            new_values.append(pool_values)
        return self.norm(x), KVPages(keys=new_keys, values=new_values)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[..., d] → float32 [..., v]."""
        if self.lm_head is None:
            return jnp.einsum("...d,vd->...v", hidden, self.embed_tokens[...],
                              preferred_element_type=jnp.float32)
        return jnp.einsum("...d,dv->...v", hidden, self.lm_head[...],
                          preferred_element_type=jnp.float32)
