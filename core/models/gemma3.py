"""Gemma 3 text decoder (`Gemma3ForCausalLM`, model_type "gemma3_text") in Flax NNX.

Owns what Gemma 3 changes in the Llama-family decoder of `core.models.llama` (whose attention,
paged KV pool, RoPE and dense helpers it reuses): RMSNorm scaled by (1 + w) with the product
taken in float32; four norms per layer (input, post-attention, pre- and post-feed-forward); q/k
norms of that kind; the embedding multiplied by √hidden cast to the compute dtype; GeGLU (GELU,
tanh-approximated as `gelu_pytorch_tanh`); attention scores scaled by query_pre_attn_scalar^-½;
interleaved sliding-window and global layers, each kind with its own RoPE (the global one's
base and linear scaling from ModelConfig, the local one's `local_rope_theta`); and the optional
final-logit softcapping. The settings come from `ModelConfig.gemma` (core/model_config.py).

A Gemma3ForConditionalGeneration checkpoint (4B and up) is served as its language model:
`text_tensor_name` maps its tensor names onto Gemma3ForCausalLM's and leaves the vision tower
and projector unread; image inputs are refused before they reach the model.

Every layer keeps keys for the whole context (the KV pool is the Llama one): a sliding layer
masks what lies beyond its window rather than freeing it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from core.cache.kv_pool import KVPages
from core.model_config import ModelConfig
from core.models.llama import (
    MLP,
    Attention,
    LlamaModel,
    RMSNorm,
    _param,
    embed,
    project,
    rope_inverse_frequencies,
)

# Gemma3ForConditionalGeneration's names for its language model, in the layouts transformers
# wrote over time (the hub's files and transformers 5's saves: language_model.model.*; 4.52 to
# 4.57: model.language_model.*), and the prefixes of the parts that are not the language model
_TEXT_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                  ("language_model.lm_head.", "lm_head."))
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                    "model.multi_modal_projector.")


def text_tensor_name(name: str) -> str | None:
    """A multimodal Gemma 3 checkpoint's tensor name as Gemma3ForCausalLM names it; None for the
    vision tower's and the projector's (not loaded)."""
    if name.startswith(_VISION_PREFIXES):
        return None
    for prefix, replacement in _TEXT_PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix):]
    return name


def gemma_rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm times (1 + weight), in float32, cast back after the product (as transformers'
    Gemma3RMSNorm: Llama casts before the weight)."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


class GemmaRMSNorm(RMSNorm):
    """A (1 + w) RMSNorm: its weight starts at zero (the identity scale)."""

    def __init__(self, width: int, eps: float, dtype):
        super().__init__(width, eps, dtype)
        self.weight = nnx.Param(jnp.zeros((width,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return gemma_rms_norm(x, self.weight[...], self.eps)


class Gemma3Attention(Attention):
    """Llama attention with Gemma's q/k norms, score scale and this layer's window."""

    def __init__(self, config: ModelConfig, window: int | None, dtype, rngs: nnx.Rngs):
        super().__init__(config, dtype, rngs)
        self.q_norm = GemmaRMSNorm(config.head_dim, config.rms_norm_eps, dtype)
        self.k_norm = GemmaRMSNorm(config.head_dim, config.rms_norm_eps, dtype)
        self.sliding_window = window  # None: a global layer
        self.scale = config.gemma.query_pre_attn_scalar ** -0.5


class GeGLU(MLP):
    """gate, up, down as Llama's MLP, with GELU in place of SiLU."""

    def __init__(self, config: ModelConfig, dtype, rngs: nnx.Rngs):
        super().__init__(config, dtype, rngs)
        self.approximate = config.gemma.gelu_approximate

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = jax.nn.gelu(project(self, "gate_proj", x), approximate=self.approximate)
        return project(self, "down_proj", gate * project(self, "up_proj", x))


class Gemma3DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, window: int | None, dtype, rngs: nnx.Rngs):
        d, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(d, eps, dtype)
        self.self_attn = Gemma3Attention(config, window, dtype, rngs)
        self.post_attention_layernorm = GemmaRMSNorm(d, eps, dtype)
        self.pre_feedforward_layernorm = GemmaRMSNorm(d, eps, dtype)
        self.mlp = GeGLU(config, dtype, rngs)
        self.post_feedforward_layernorm = GemmaRMSNorm(d, eps, dtype)

    def __call__(self, x, positions, page_table, inv_freq, pool_keys, pool_values, kind="gather"):
        attn_out, pool_keys, pool_values = self.self_attn(
            self.input_layernorm(x), positions, page_table, inv_freq, pool_keys, pool_values,
            kind)
        x = x + self.post_attention_layernorm(attn_out)
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x, pool_keys, pool_values


class Gemma3Model(LlamaModel):
    """Token ids → hidden states (`__call__`) → float32 logits (`logits`), as `LlamaModel`."""

    def __init__(self, config: ModelConfig, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        if config.gemma is None:
            raise ValueError("Gemma3Model needs ModelConfig.gemma")
        rngs = rngs or nnx.Rngs(0)
        self.config = config
        self.embed_tokens = _param(rngs, (config.vocab_size, config.hidden_size), dtype)
        self.layers = nnx.List([Gemma3DecoderLayer(config, window, dtype, rngs)
                                for window in config.gemma.layer_windows])
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        lm_head = None  # as LlamaModel: a transposed copy of a tied table in bf16
        if not config.tie_word_embeddings:
            lm_head = _param(rngs, (config.hidden_size, config.vocab_size), dtype)
        elif jnp.dtype(dtype) != jnp.float32:
            lm_head = nnx.Param(self.embed_tokens[...].T)
        self.lm_head = lm_head

    def __call__(self, token_ids: jax.Array, positions: jax.Array, page_table: jax.Array,
                 pages: KVPages) -> tuple[jax.Array, KVPages]:
        """token_ids, positions [b, t] (PADDING_POSITION for padding), page_table [b, p] →
        (final-normed hidden states [b, t, d], updated pages)."""
        config, gemma = self.config, self.config.gemma
        global_freq = rope_inverse_frequencies(config.head_dim, config.rope_theta,
                                               config.rope_scaling)
        local_freq = rope_inverse_frequencies(config.head_dim, gemma.local_rope_theta, None)
        table = self.embed_tokens[...]
        # √hidden in the compute dtype, as transformers' Gemma3TextScaledWordEmbedding
        x = embed(table, token_ids) * jnp.asarray(math.sqrt(config.hidden_size), table.dtype)
        new_keys, new_values = [], []
        for layer, window, pool_keys, pool_values in zip(
                self.layers, gemma.layer_windows, pages.keys, pages.values, strict=True):
            inv_freq = global_freq if window is None else local_freq
            x, pool_keys, pool_values = layer(x, positions, page_table, inv_freq,
                                              pool_keys, pool_values, pages.kind)
            new_keys.append(pool_keys)
            new_values.append(pool_values)
        return self.norm(x), KVPages(keys=new_keys, values=new_values, kind=pages.kind)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[..., d] → float32 [..., v], softcapped when the config says so."""
        logits = super().logits(hidden)
        cap = self.config.gemma.final_logit_softcapping
        return logits if cap is None else cap * jnp.tanh(logits / cap)
