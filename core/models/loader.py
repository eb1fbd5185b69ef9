"""Hugging Face model directory → a `LlamaModel` (or its Gemma 3 form) with its weights.

Owns: finding the safetensors files (single `model.safetensors` or a sharded
`model.safetensors.index.json`), mapping Hugging Face tensor names onto the NNX module's
parameters (transposing Linear weights to our einsum layouts), casting to the compute dtype, and
checking that every parameter was filled and every checkpoint tensor was used. A MoE layer's
experts, one tensor per expert in the checkpoint, are stacked into one [e, ...] parameter.
With --quantization the loaded projections are then quantized (`core.models.quantize`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from core.config import checkpoint_files
from core.model_config import GEMMA3_MULTIMODAL_ARCHITECTURES, ConfigError, ModelConfig
from core.models.llama import LlamaModel
from core.models.moe import SparseMoeBlock
from core.models.quantize import quantize_model

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry


# HF tensor name → (our parameter, or one expert's row of it; numpy transform to our layout)
TensorPlan = dict[str, tuple["nnx.Variable | ExpertRow", Callable]]


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
        })
        if isinstance(mlp, SparseMoeBlock):
            plan.update(_expert_plan(prefix, mlp, config))
        else:
            plan.update({prefix + f"mlp.{name}_proj.weight": (getattr(mlp, f"{name}_proj"),
                                                              transpose)
                         for name in ("gate", "up", "down")})
        if config.qkv_bias:
            plan[prefix + "self_attn.q_proj.bias"] = (attn.q_bias, lambda b: b.reshape(n, h))
            plan[prefix + "self_attn.k_proj.bias"] = (attn.k_bias, lambda b: b.reshape(k, h))
            plan[prefix + "self_attn.v_proj.bias"] = (attn.v_bias, lambda b: b.reshape(k, h))
        if config.o_bias:
            plan[prefix + "self_attn.o_proj.bias"] = (attn.o_bias, identity)
        if config.qk_norm:  # [h] scales, one per layer for all query heads and one for keys
            plan[prefix + "self_attn.q_norm.weight"] = (attn.q_norm.weight, identity)
            plan[prefix + "self_attn.k_norm.weight"] = (attn.k_norm.weight, identity)
        if config.mlp_bias and not isinstance(mlp, SparseMoeBlock):
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


def _expert_plan(prefix: str, moe: SparseMoeBlock, config: ModelConfig) -> TensorPlan:
    """A MoE layer's tensors, as Hub checkpoints (and transformers' `save_pretrained`) name
    them: Qwen3-MoE `mlp.gate` and `mlp.experts.N.{gate,up,down}_proj`, Mixtral
    `block_sparse_moe.gate` and `block_sparse_moe.experts.N.{w1,w3,w2}` (gate, up, down). Each
    expert's [out, in] Linear fills slice N of our stacks' expert axis: gate/up [d, e, f] (axis
    1), down [e, f, d] (axis 0)."""
    if config.architecture == "MixtralForCausalLM":
        block, names = prefix + "block_sparse_moe.", {"gate": "w1", "up": "w3", "down": "w2"}
    else:
        block, names = prefix + "mlp.", {name: f"{name}_proj" for name in ("gate", "up", "down")}
    plan: TensorPlan = {block + "gate.weight": (moe.router, lambda w: w.T)}
    for ours, theirs in names.items():
        stack = getattr(moe, f"expert_{ours}")
        for expert in range(config.moe.num_experts):
            plan[f"{block}experts.{expert}.{theirs}.weight"] = (
                ExpertRow(stack, expert, 0 if ours == "down" else 1), lambda w: w.T)
    return plan


@dataclass(frozen=True)
class ExpertRow:
    """Where one expert's tensor goes: index `expert` along `axis` (the expert axis) of a
    stacked parameter. The slices are gathered while the checkpoint is read and the stack is set
    once (`load_model`)."""

    stack: nnx.Variable
    expert: int
    axis: int  # the stack's expert axis


def load_model(model_dir: Path, dtype: str | None = None, config: ModelConfig | None = None,
               quantization: str | None = None, quantize_lm_head: bool = False
               ) -> tuple[LlamaModel, ModelConfig]:
    """Build the model abstractly (no random init) and fill it from the checkpoint. `config` is
    the checkpoint's, already read (`core.config.resolve_model`); None reads it here (tools).
    `quantization` "int8" quantizes the linear projections after loading
    (`core.models.quantize`; the lm_head too with `quantize_lm_head`)."""
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
    expert_rows: dict[int, tuple[nnx.Variable, int, dict[int, np.ndarray]]] = {}
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
                target = param.stack if isinstance(param, ExpertRow) else param
                expected = target.get_value().shape
                if isinstance(param, ExpertRow):  # one slice: the stack without its expert axis
                    expected = expected[:param.axis] + expected[param.axis + 1:]
                if array.shape != expected:
                    raise ConfigError(f"{name}: shape {array.shape}, expected {expected}")
                if isinstance(param, ExpertRow):
                    expert_rows.setdefault(id(target), (target, param.axis, {}))[2][
                        param.expert] = array
                else:
                    param.set_value(jnp.asarray(array, dtype=compute_dtype))
    if plan:
        raise ConfigError(f"{model_dir}: checkpoint lacks {sorted(plan)[:5]} "
                          f"({len(plan)} tensors missing)")
    if unused:
        raise ConfigError(f"{model_dir}: unexpected tensors {unused[:5]} ({len(unused)} in all)")
    for stack, axis, rows in expert_rows.values():  # every slice is there: the plan is empty
        stack.set_value(jnp.asarray(np.stack([rows[e] for e in range(len(rows))], axis=axis),
                                    dtype=compute_dtype))
    model.tie_lm_head()
    if quantization is not None:
        quantize_model(model, quantization, include_lm_head=quantize_lm_head)
    return model, config
