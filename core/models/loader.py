"""Hugging Face model directory → a `LlamaModel` (or its Gemma 3 form) with its weights.

Owns: finding the safetensors files (single `model.safetensors` or a sharded
`model.safetensors.index.json`), mapping Hugging Face tensor names onto the NNX module's
parameters (transposing Linear weights to our einsum layouts), casting to the compute dtype, and
checking that every parameter was filled and every checkpoint tensor was used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from core.config import checkpoint_files
from core.model_config import GEMMA3_MULTIMODAL_ARCHITECTURES, ConfigError, ModelConfig
from core.models.llama import LlamaModel

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry


TensorPlan = dict[str, tuple[nnx.Variable, Callable]]


def _tensor_plan(model: LlamaModel, config: ModelConfig) -> TensorPlan:
    """HF tensor name → (our parameter, numpy transform from HF layout to ours)."""
    d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim

    def split_heads(heads: int) -> Callable:
        return lambda w: w.T.reshape(d, heads, h)  # [heads*h, d] → [d, heads, h]

    def identity(w):
        return w

    def transpose(w):
        return w.T

    plan = {"model.embed_tokens.weight": (model.embed_tokens, identity),
            "model.norm.weight": (model.norm.weight, identity)}
    if model.lm_head is not None and not config.tie_word_embeddings:
        plan["lm_head.weight"] = (model.lm_head, transpose)
    for i, layer in enumerate(model.layers):
        prefix, attn, mlp = f"model.layers.{i}.", layer.self_attn, layer.mlp
        plan.update({
            prefix + "input_layernorm.weight": (layer.input_layernorm.weight, identity),
            prefix + "post_attention_layernorm.weight": (layer.post_attention_layernorm.weight,
                                                         identity),
            prefix + "self_attn.q_proj.weight": (attn.q_proj, split_heads(n)),
            prefix + "self_attn.k_proj.weight": (attn.k_proj, split_heads(k)),
            prefix + "self_attn.v_proj.weight": (attn.v_proj, split_heads(k)),
            prefix + "self_attn.o_proj.weight": (attn.o_proj, lambda w: w.T.reshape(n, h, d)),
            prefix + "mlp.gate_proj.weight": (mlp.gate_proj, transpose),
            prefix + "mlp.up_proj.weight": (mlp.up_proj, transpose),
            prefix + "mlp.down_proj.weight": (mlp.down_proj, transpose),
        })
        if config.qkv_bias:
            plan[prefix + "self_attn.q_proj.bias"] = (attn.q_bias, lambda b: b.reshape(n, h))
            plan[prefix + "self_attn.k_proj.bias"] = (attn.k_bias, lambda b: b.reshape(k, h))
            plan[prefix + "self_attn.v_proj.bias"] = (attn.v_bias, lambda b: b.reshape(k, h))
        if config.o_bias:
            plan[prefix + "self_attn.o_proj.bias"] = (attn.o_bias, identity)
        if config.qk_norm:  # [h] scales, one per layer for all query heads and one for keys
            plan[prefix + "self_attn.q_norm.weight"] = (attn.q_norm.weight, identity)
            plan[prefix + "self_attn.k_norm.weight"] = (attn.k_norm.weight, identity)
        if config.mlp_bias:
            for name in ("gate", "up", "down"):
                plan[prefix + f"mlp.{name}_proj.bias"] = (getattr(mlp, f"{name}_bias"), identity)
        if config.gemma is not None:  # Gemma 3: norms around the MLP too
            for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
                plan[prefix + f"{name}.weight"] = (getattr(layer, name).weight, identity)
    return plan


def _identity_name(name: str) -> str | None:
    return name


def build_model(config: ModelConfig, dtype, rngs: nnx.Rngs) -> LlamaModel:
    """The decoder module of the config's family (Llama-shaped or Gemma 3)."""
    if config.gemma is not None:
        from core.models.gemma3 import Gemma3Model

        return Gemma3Model(config, dtype, rngs)
    return LlamaModel(config, dtype, rngs)


def load_model(model_dir: Path, dtype: str | None = None,
               config: ModelConfig | None = None) -> tuple[LlamaModel, ModelConfig]:
    """Build the model abstractly (no random init) and fill it from the checkpoint. `config` is
    the checkpoint's, already read (`core.config.resolve_model`); None reads it here (tools)."""
    model_dir = Path(model_dir)
    config = config or ModelConfig.from_hf_dir(model_dir)
    dtype_name = dtype or config.dtype
    if dtype_name not in DTYPES:
        raise ConfigError(f"dtype {dtype_name!r} is not supported: {', '.join(DTYPES)}")
    compute_dtype = DTYPES[dtype_name]
    model = nnx.eval_shape(lambda: build_model(config, compute_dtype, nnx.Rngs(0)))
    plan = _tensor_plan(model, config)
    rename = _identity_name
    if config.architecture in GEMMA3_MULTIMODAL_ARCHITECTURES:  # its language model only
        from core.models.gemma3 import text_tensor_name as rename
    unused: list[str] = []
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="numpy") as tensors:
            for stored_name in tensors.keys():
                name = rename(stored_name)
                if name is None:  # a part of the checkpoint the model does not use
                    continue
                if name not in plan:
                    tied_head = name == "lm_head.weight" and config.tie_word_embeddings
                    if not tied_head and not name.endswith(IGNORED_SUFFIXES):
                        unused.append(name)
                    continue
                param, transform = plan.pop(name)
                array = np.asarray(transform(tensors.get_tensor(stored_name)))
                if array.shape != param.get_value().shape:
                    raise ConfigError(f"{name}: shape {array.shape}, "
                                      f"expected {param.get_value().shape}")
                param.set_value(jnp.asarray(array, dtype=compute_dtype))
    if plan:
        raise ConfigError(f"{model_dir}: checkpoint lacks {sorted(plan)[:5]} "
                          f"({len(plan)} tensors missing)")
    if unused:
        raise ConfigError(f"{model_dir}: unexpected tensors {unused[:5]} ({len(unused)} in all)")
    model.tie_lm_head()
    return model, config
