"""Int8 weight-only quantization of a loaded decoder (`--quantization int8`).

Owns: turning the linear projections of a `LlamaModel` (or its Gemma 3 form) into int8 weights
with float32 scales, at load time, from the float weights the checkpoint gave. The scheme is
symmetric and per output channel: each output column c of a weight W [in, out] gets
scale_c = max|W[:, c]| / 127 and W_int8[:, c] = round(W[:, c] / scale_c), so a column's largest
weight is exact and every other is off by at most scale_c / 2. The forward
(`core.models.llama.dense`) converts the int8 weight to the compute dtype for the dot and
multiplies the dot's float32 result by the scales, per output column. On XLA:CPU that convert is
not fused into the dot: each step writes float copies of the weights (all layers' at once, in
its temporaries), so int8 saves weight memory but decodes slower than float there
(docs/benchmarks.md); a fused int8 dot kernel (jax.ffi) is the missing piece.

Quantized: every layer's q/k/v/o and gate/up/down projections, and the output projection
(lm_head) when asked. Left in float: the embedding table (a gather, not a dot), the norms, the
biases, a tied float32 head (it is the embedding table), and Qwen3's q/k norm scales. Scales are
named `<weight>_scale` beside their weight and shard with its output axes
(core/engine/sharding.py). Mixture-of-experts layers are refused (not implemented).
`next_token_logits` runs a whole-prompt forward, to compare a quantized model with its float
self (scripts/bench_quantization.py, the tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core.cache.kv_pool import KVPages
from core.config import QUANTIZATIONS
from core.model_config import ConfigError
from core.models.moe import SparseMoeBlock

INT8_MAX = 127  # symmetric range [-127, 127]: -128 is never used

# (module attribute, leading input axes of its weight) per module kind
ATTENTION_WEIGHTS = (("q_proj", 1), ("k_proj", 1), ("v_proj", 1), ("o_proj", 2))
MLP_WEIGHTS = (("gate_proj", 1), ("up_proj", 1), ("down_proj", 1))


def quantize_int8(weight: np.ndarray, input_axes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """weight [in..., out...] (its first `input_axes` axes are the input) → (int8 weight of the
    same shape, float32 scales [out...]): symmetric, one scale per output channel. An all-zero
    channel gets scale 1 (its int8 weights are 0)."""
    w32 = np.asarray(weight, dtype=np.float32)
    absmax = np.max(np.abs(w32), axis=tuple(range(input_axes)))
    scale = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
    quantized = np.clip(np.rint(w32 / scale), -INT8_MAX, INT8_MAX).astype(np.int8)
    return quantized, scale


def _quantize_param(module: nnx.Module, name: str, input_axes: int) -> None:
    param = getattr(module, name)
    quantized, scale = quantize_int8(np.asarray(param.get_value()), input_axes)
    param.set_value(jnp.asarray(quantized))
    setattr(module, f"{name}_scale", nnx.Param(jnp.asarray(scale)))


def quantize_model(model, method: str, include_lm_head: bool = False) -> None:
    """Quantize the loaded model's linear projections in place (see the module docstring)."""
    if method not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of none, {', '.join(QUANTIZATIONS)}; "
                          f"got {method!r}")
    if any(isinstance(layer.mlp, SparseMoeBlock) for layer in model.layers):
        raise ConfigError(f"--quantization {method}: mixture-of-experts models are not "
                          "supported (their expert weights would stay float); serve this "
                          "model without --quantization")
    for layer in model.layers:
        for name, input_axes in ATTENTION_WEIGHTS:
            _quantize_param(layer.self_attn, name, input_axes)
        for name, input_axes in MLP_WEIGHTS:
            _quantize_param(layer.mlp, name, input_axes)
    if include_lm_head and model.lm_head is not None:
        _quantize_param(model, "lm_head", 1)


def next_token_logits(model, prompts: jax.Array, page_size: int = 16) -> jax.Array:
    """prompts [b, t] (no padding) → float32 next-token logits [b, v] after each prompt, from
    one forward over a throwaway KV pool of the rows' own pages."""
    b, t = prompts.shape
    pages_per_row = -(-t // page_size)
    pages = KVPages.create(model.config, b * pages_per_row + 1, page_size,
                           model.embed_tokens[...].dtype)  # + the scratch page
    table = jnp.arange(b * pages_per_row, dtype=jnp.int32).reshape(b, pages_per_row)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    hidden, _ = model(prompts, positions, table, pages)
    return model.logits(hidden[:, -1])
