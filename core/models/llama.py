"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3 dense; with core/models/moe.py's
experts as the MLP, Qwen3-MoE and Mixtral) in Flax NNX.

Owns: the forward pass from token ids to hidden states and logits, RoPE (plain, linear and
llama3 scaling), GQA attention over a KV cache pytree (with Mistral's sliding window and Qwen3's
per-head q/k RMSNorm), and the paged KV pool. Reads top-down: config → helpers → layers → model.

Einsum letters: b batch, t new tokens, s cached positions, d model width, n query heads,
k key/value heads, g query heads per kv head, h head width, f MLP width, v vocabulary.
The KV cache is a plain pytree passed in and returned (donated by the caller's jit): one pool
per layer: keys [pages, k, h, page_size] and values [pages, k, page_size, h]
(`core.cache.pages.KVPages`). Each batch row has a
page table [p] of page ids in position order: token position `i` lives in page
`table[i // page_size]` at offset `i % page_size`. A row writes its new tokens' keys and values
into its pages, then attends to the pages of its table (p·page_size keys, masked by position).
On GPU/TPU (`core.cache.kv_pool.paged_attention_kind`) both pools are [k, pages, page_size, h]
and decode attends with JAX's Pallas paged-attention kernel instead of gathering pages; on CPU
(kind "cpu-kernel") decode attends with Tandem's own kernel (core/kernels/), which reads the
pages in place, where a build of it loads.
The pool's last page is scratch: padding tokens write there (an in-bounds scatter updates the
donated pool in place; an out-of-bounds "drop" made XLA copy the pool for single-row batches),
and no page table ever lists it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from core.cache.kv_pool import KVPages, gather_layout, to_float32, to_storage
from core.kernels import cpu as cpu_kernels
from core.model_config import ModelConfig, RopeScaling
from core.models.moe import SparseMoeBlock

PADDING_POSITION = -1  # position of padding tokens: never written to the cache, never attended
DECODE_BLOCK_PAGES = 8  # pages a decode row attends to per step of its online softmax


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


def dense(x: jax.Array, weight: jax.Array, scale: jax.Array | None = None) -> jax.Array:
    """x [..., d] · weight [d, f] → [..., f] in x's dtype, as one 2-D dot with a float32 result:
    the form XLA:CPU runs bf16 on its fast path (f32 result, row-major right operand, M > 1 —
    callers never pass a single row in bf16; a float32 dot is unchanged by it).

    With `scale` (float32, one per output channel: [f] or any shape of f elements) the weight is
    int8 (`core.models.quantize`): it is converted to x's dtype for the dot and the scale
    multiplies the dot's float32 result, per output column. XLA:CPU does not fuse that convert
    into the dot: it writes a float copy of the weight every step (docs/benchmarks.md)."""
    rows = x.reshape(-1, x.shape[-1])
    weight = weight.reshape(weight.shape[0], -1)
    if scale is not None:
        weight = weight.astype(rows.dtype)
    out = jnp.dot(rows, weight, preferred_element_type=jnp.float32)
    if scale is not None:
        out = out * scale.reshape(-1)
    return out.astype(x.dtype).reshape(*x.shape[:-1], -1)


def project(module: nnx.Module, name: str, x: jax.Array, input_axes: int = 1) -> jax.Array:
    """x [..., in] through `module.<name>`, a weight whose first `input_axes` axes are its input
    (flattened to `in`): float, or int8 with the float32 per-output-channel scales
    `module.<name>_scale` that `core.models.quantize` adds."""
    weight = getattr(module, name)[...]
    scale = getattr(module, f"{name}_scale", None)
    weight = weight.reshape(math.prod(weight.shape[:input_axes]), -1)
    return dense(x, weight, None if scale is None else scale[...])


def embed(table: jax.Array, token_ids: jax.Array) -> jax.Array:
    """Rows of the embedding table. A bf16 table is gathered as its uint16 bits: XLA:CPU
    gathers bf16 from a float32 copy of the whole table (65 MB a step for a 32000×512 table)."""
    if table.dtype != jnp.bfloat16:
        return table[token_ids]
    bits = jax.lax.bitcast_convert_type(table, jnp.uint16)[token_ids]
    return jax.lax.bitcast_convert_type(bits, jnp.bfloat16)


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
        # Qwen3: RMSNorm over each head's width h (one [h] scale for all heads), before RoPE
        self.q_norm = RMSNorm(h, config.rms_norm_eps, dtype) if config.qk_norm else None
        self.k_norm = RMSNorm(h, config.rms_norm_eps, dtype) if config.qk_norm else None
        self.num_groups = n // k
        self.sliding_window = config.sliding_window
        self.scale = h ** -0.5

    def __call__(self, x, positions, page_table, inv_freq, pool_keys, pool_values, kind="gather"):
        """x [b, t, d], positions [b, t], page_table [b, p] → (out [b, t, d], updated pools);
        `kind` is the pool's layout and decode path (`core.cache.kv_pool.paged_attention_kind`)."""
        b, t, d = x.shape
        n, k, h = self.q_proj.shape[1], self.k_proj.shape[1], self.k_proj.shape[2]
        # 2-D matmuls on reshaped (bitcast) weights: a 3-operand einsum made XLA relayout them
        q = project(self, "q_proj", x).reshape(b, t, n, h)
        key = project(self, "k_proj", x).reshape(b, t, k, h)
        value = project(self, "v_proj", x).reshape(b, t, k, h)
        if self.qkv_bias:
            q, key, value = q + self.q_bias[...], key + self.k_bias[...], value + self.v_bias[...]
        if self.q_norm is not None:
            q, key = self.q_norm(q), self.k_norm(key)  # [b, t, n, h], [b, t, k, h], over h
        q, key = apply_rope(q, positions, inv_freq), apply_rope(key, positions, inv_freq)
        pool_keys, pool_values = _write(pool_keys, pool_values, positions, page_table, key, value,
                                        kind)
        q = q.reshape(b, t, k, self.num_groups, h) * self.scale
        if t == 1 and kind == "cpu-kernel":
            out = cpu_kernels.paged_decode_attention(
                q[:, 0], pool_keys, pool_values, page_table, positions[:, 0],
                self.sliding_window).astype(q.dtype)[:, None]  # [b, 1, k, g, h]
        elif not gather_layout(kind):
            if t == 1 and self.sliding_window is None:
                out = _pallas_decode(q, positions, page_table, pool_keys, pool_values, kind)
            else:
                out = self._prefill_attention(q, positions, page_table, pool_keys, pool_values,
                                              kind)
        elif t == 1:
            out = self._decode_attention(q, positions, page_table, pool_keys, pool_values)
        else:
            out = self._prefill_attention(q, positions, page_table, pool_keys, pool_values)
        out = project(self, "o_proj", out.reshape(b, t, n * h), input_axes=2)
        if self.o_bias is not None:
            out = out + self.o_bias[...]
        return out, pool_keys, pool_values

    def _visible(self, key_positions, query_positions):
        visible = (key_positions <= query_positions) & (query_positions >= 0)
        if self.sliding_window is not None:
            visible &= query_positions - key_positions < self.sliding_window
        return visible

    def _decode_attention(self, q, positions, page_table, pool_keys, pool_values):
        """One query per row, over its pages in blocks of DECODE_BLOCK_PAGES with an online
        softmax (flash-decoding): each block gathers [b, n] pages, attends to them as they lie
        and rescales the running sum, so no row's whole KV is copied at once (that copy, and
        XLA's transposes of it, ran at 1–5 GB/s on XLA:CPU). The loop stops after the last block
        any row can see: a wide page-table bucket costs only the blocks in use."""
        b, num_table_pages = page_table.shape
        page_size = pool_keys.shape[-1]
        block = min(DECODE_BLOCK_PAGES, num_table_pages)
        num_blocks = -(-num_table_pages // block)
        # pad the table to whole blocks: the extra entries are masked (beyond every position)
        table = jnp.pad(page_table, ((0, 0), (0, num_blocks * block - num_table_pages)))
        table = table.reshape(b, num_blocks, block)
        query = q[:, 0].astype(jnp.float32)  # [b, k, g, h]
        query_positions = positions[:, :1, None]  # [b, 1, 1]
        offsets = jnp.arange(block)[:, None] * page_size + jnp.arange(page_size)[None, :]
        lowest = jnp.finfo(jnp.float32).min

        def attend_block(index, carry):
            peak, total, acc = carry  # [b, k, g], [b, k, g], [b, k, g, h]
            ids = jax.lax.dynamic_index_in_dim(table, index, axis=1, keepdims=False)  # [b, n]
            # float32 math (a no-op for float32 pools)
            keys, values = to_float32(pool_keys[ids]), to_float32(pool_values[ids])
            scores = jnp.einsum("bkgh,bnkhc->bkgnc", query, keys)  # [b, k, g, n, c]
            visible = self._visible(index * block * page_size + offsets[None],
                                    query_positions)  # [b, n, c]
            scores = jnp.where(visible[:, None, None], scores, lowest)
            new_peak = jnp.maximum(peak, jnp.max(scores, axis=(3, 4)))
            weights = jnp.where(visible[:, None, None],
                                jnp.exp(scores - new_peak[..., None, None]), 0.0)
            rescale = jnp.exp(peak - new_peak)
            total = total * rescale + jnp.sum(weights, axis=(3, 4))
            acc = acc * rescale[..., None] + jnp.einsum("bkgnc,bnkch->bkgh", weights, values)
            return new_peak, total, acc

        # blocks up to the furthest position of any row (padding rows see nothing)
        blocks_in_use = jnp.clip(jnp.max(positions[:, 0]) // (block * page_size) + 1,
                                 1, num_blocks)
        start = (jnp.full(query.shape[:3], lowest), jnp.zeros(query.shape[:3], jnp.float32),
                 jnp.zeros(query.shape, jnp.float32))
        if num_blocks == 1:  # one block: no loop around it (a loop costs XLA its fusions)
            _, total, acc = attend_block(0, start)
        else:
            _, total, acc = jax.lax.fori_loop(0, blocks_in_use, attend_block, start)
        out = acc / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)[..., None]
        return out.astype(q.dtype)[:, None]  # [b, 1, k, g, h]

    def _prefill_attention(self, q, positions, page_table, pool_keys, pool_values,
                           kind="gather"):
        """Many queries of one sequence: its pages are laid out contiguously once."""
        b, p = page_table.shape
        if gather_layout(kind):
            k, h, page_size = pool_keys.shape[1:]
            keys = pool_keys[page_table].transpose(0, 2, 3, 1, 4).reshape(b, k, h, p * page_size)
            values = pool_values[page_table].transpose(0, 2, 1, 3, 4).reshape(
                b, k, p * page_size, h)
        else:  # [k, pages, c, h] pools: [k, b, p, c, h] gathered
            k, _, page_size, h = pool_keys.shape
            keys = pool_keys[:, page_table].transpose(1, 0, 4, 2, 3).reshape(
                b, k, h, p * page_size)
            values = pool_values[:, page_table].transpose(1, 0, 2, 3, 4).reshape(
                b, k, p * page_size, h)
        keys, values = to_float32(keys), to_float32(values)
        scores = jnp.einsum("btkgh,bkhs->bkgts", q.astype(jnp.float32), keys)
        visible = self._visible(jnp.arange(p * page_size)[None, None, :], positions[:, :, None])
        scores = jnp.where(visible[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1)
        return jnp.einsum("bkgts,bksh->btkgh", weights, values).astype(q.dtype)


def _write(pool_keys, pool_values, positions, page_table, key, value, kind="gather"):
    """Scatter new keys/values [b, t, k, h] into the pools at their positions' page slots.

    Keys lie [pages, k, h, page_size] and values [pages, k, page_size, h]: the layouts the
    decode dots read without transposing (the Pallas kinds: both [k, pages, page_size, h]).
    Padding writes go to the scratch (last) page, so the scatter stays in bounds and XLA
    updates the donated pools in place."""
    if gather_layout(kind):
        num_pages, page_size = pool_keys.shape[0], pool_keys.shape[-1]
    else:
        num_pages, page_size = pool_keys.shape[1], pool_keys.shape[2]
    valid = positions >= 0
    clamped = jnp.where(valid, positions, 0)
    page_ids = jnp.take_along_axis(page_table, clamped // page_size, axis=1)  # [b, t]
    page_ids = jnp.where(valid, page_ids, num_pages - 1)
    offsets = jnp.where(valid, clamped % page_size, 0)
    if not gather_layout(kind):
        return (pool_keys.at[:, page_ids, offsets].set(
                    to_storage(key, pool_keys).transpose(2, 0, 1, 3), mode="promise_in_bounds"),
                pool_values.at[:, page_ids, offsets].set(
                    to_storage(value, pool_values).transpose(2, 0, 1, 3),
                    mode="promise_in_bounds"))
    pool_keys = pool_keys.at[page_ids, :, :, offsets].set(
        to_storage(key, pool_keys), mode="promise_in_bounds")
    pool_values = pool_values.at[page_ids, :, offsets, :].set(
        to_storage(value, pool_values), mode="promise_in_bounds")
    return pool_keys, pool_values


def _pallas_decode(q, positions, page_table, pool_keys, pool_values, kind):
    """Decode attention with JAX's Pallas paged-attention kernel (GPU: Triton; TPU: Mosaic),
    which reads each row's pages in place: q [b, 1, k, g, h] (scaled) → [b, 1, k, g, h]."""
    b, _, k, g, h = q.shape
    num_table_pages = page_table.shape[1]
    lengths = jnp.maximum(positions[:, 0] + 1, 1).astype(jnp.int32)  # padding rows: junk
    queries = q[:, 0].reshape(b, k * g, h).astype(pool_keys.dtype)
    splits = math.gcd(num_table_pages, 16)  # partitions of the table (must divide it)
    if jax.default_backend() == "tpu":
        from jax.experimental.pallas.ops.tpu.paged_attention import paged_attention

        out = paged_attention(queries, pool_keys, pool_values, lengths, page_table,
                              pages_per_compute_block=math.gcd(num_table_pages, 8))
    else:
        from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention

        out = paged_attention(queries, pool_keys, pool_values, page_table, lengths,
                              k_splits=splits,
                              pages_per_compute_block=math.gcd(num_table_pages // splits, 8),
                              interpret=kind == "pallas-interpret")
    return out.reshape(b, 1, k, g, h).astype(q.dtype)


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
        gate = project(self, "gate_proj", x)
        up = project(self, "up_proj", x)
        if self.mlp_bias:
            gate, up = gate + self.gate_bias[...], up + self.up_bias[...]
        out = project(self, "down_proj", jax.nn.silu(gate) * up)
        return out + self.down_bias[...] if self.mlp_bias else out


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, dtype, rngs: nnx.Rngs, index: int = 0):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, dtype, rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        # layer `index`'s MLP: the experts where the MoE config makes it sparse (core/models/moe.py)
        sparse = config.moe is not None and config.moe.is_sparse(index)
        self.mlp = SparseMoeBlock(config, dtype, rngs) if sparse else MLP(config, dtype, rngs)

    def __call__(self, x, positions, page_table, inv_freq, pool_keys, pool_values, kind="gather"):
        attn_out, pool_keys, pool_values = self.self_attn(
            self.input_layernorm(x), positions, page_table, inv_freq, pool_keys, pool_values,
            kind)
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
        self.layers = nnx.List([DecoderLayer(config, dtype, rngs, index)
                                for index in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        # the output projection [d, v], row-major. Tied embeddings in float32 read the table
        # itself; in bf16 they get a transposed copy, the right operand XLA:CPU's bf16 fast
        # path needs (`tie_lm_head` refills it after the table is loaded)
        lm_head = None
        if not config.tie_word_embeddings:
            lm_head = _param(rngs, (config.hidden_size, config.vocab_size), dtype)
        elif jnp.dtype(dtype) != jnp.float32:
            lm_head = nnx.Param(self.embed_tokens[...].T)
        self.lm_head = lm_head  # int8 with `lm_head_scale` [v] after `core.models.quantize`

    def tie_lm_head(self) -> None:
        """Refresh the transposed copy of a tied embedding table (after loading the table)."""
        if self.config.tie_word_embeddings and self.lm_head is not None:
            self.lm_head.set_value(self.embed_tokens[...].T)

    def __call__(self, token_ids: jax.Array, positions: jax.Array, page_table: jax.Array,
                 pages: KVPages) -> tuple[jax.Array, KVPages]:
        """token_ids, positions [b, t] (PADDING_POSITION for padding), page_table [b, p] →
        (final-normed hidden states [b, t, d], updated pages)."""
        inv_freq = rope_inverse_frequencies(self.config.head_dim, self.config.rope_theta,
                                            self.config.rope_scaling)
        x = embed(self.embed_tokens[...], token_ids)
        new_keys, new_values = [], []
        for layer, pool_keys, pool_values in zip(self.layers, pages.keys, pages.values,
                                                strict=True):
            x, pool_keys, pool_values = layer(x, positions, page_table, inv_freq,
                                              pool_keys, pool_values, pages.kind)
            new_keys.append(pool_keys)
            new_values.append(pool_values)
        return self.norm(x), KVPages(keys=new_keys, values=new_values, kind=pages.kind)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[..., d] → float32 [..., v]."""
        if self.lm_head is None:
            return jnp.einsum("...d,vd->...v", hidden, self.embed_tokens[...],
                              preferred_element_type=jnp.float32)
        rows = hidden.reshape(-1, hidden.shape[-1])
        num_rows = rows.shape[0]
        if num_rows == 1 and rows.dtype != jnp.float32:  # an M = 1 bf16 dot is pathological
            rows = jnp.concatenate([rows, rows])
        logits = jnp.dot(rows, self.lm_head[...].astype(rows.dtype),
                         preferred_element_type=jnp.float32)
        scale = getattr(self, "lm_head_scale", None)  # int8 (`core.models.quantize`)
        if scale is not None:
            logits = logits * scale[...]
        return logits[:num_rows].reshape(*hidden.shape[:-1], -1)


# ---------------------------------------------------------------------------------------------
# Embeddings from a decoder


def pooled_hidden_states(model: LlamaModel, token_ids: jax.Array, attention_mask: jax.Array,
                         pooling: str, page_size: int = 16) -> jax.Array:
    """Right-padded rows token_ids, attention_mask [b, t] → unit-length embeddings [b, d]:
    the same forward as generation, over a throwaway KV pool of the rows' own pages, with the
    final-normed hidden states pooled: "last" (the last real token) or "mean" (the average over
    real tokens)."""
    from core.models.pooling import pool

    b, t = token_ids.shape
    pages_per_row = -(-t // page_size)
    pages = KVPages.create(model.config, b * pages_per_row + 1, page_size,
                           model.embed_tokens[...].dtype)  # + the scratch page
    page_table = jnp.arange(b * pages_per_row, dtype=jnp.int32).reshape(b, pages_per_row)
    positions = jnp.where(attention_mask > 0, jnp.arange(t, dtype=jnp.int32)[None, :],
                          PADDING_POSITION)
    hidden, _ = model(token_ids, positions, page_table, pages)  # [b, t, d]
    mode = "lasttoken" if pooling == "last" else "mean"
    return pool(hidden.astype(jnp.float32), attention_mask, mode, normalize=True)
