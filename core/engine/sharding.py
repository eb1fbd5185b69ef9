"""Scale-up: one `jax.sharding.Mesh` over the local devices and the logical-axis rules that place
the model's parameters and the KV pool on it (tensor parallelism, `--tensor-parallel N`; for
mixture-of-experts models also expert parallelism).

Owns: naming every parameter's axes logically (`PARAM_AXES`: "heads", "kv_heads", "mlp",
"vocab", …), the rules mapping logical axes onto the mesh axis, and the `NamedSharding`s built
from them. Attention heads, key/value heads, the MLP width and the vocabulary of the output
projection are split across devices (Megatron-style: column-parallel in, row-parallel out; XLA
inserts the all-reduces), and so are a MoE layer's experts ("experts"); the KV pages shard with
the key/value heads. When the key/value heads do not divide evenly, they are replicated instead,
as vLLM does.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from core.cache.kv_pool import gather_layout
from core.model_config import ConfigError, ModelConfig

TENSOR_AXIS = "tensor"

# parameter name → the logical name of each of its axes (layouts of core/models/llama.py)
PARAM_AXES: dict[str, tuple[str | None, ...]] = {
    "embed_tokens": ("vocab_in", "embed"),
    "lm_head": ("embed", "vocab"),
    "q_proj": ("embed", "heads", None), "q_bias": ("heads", None),
    "k_proj": ("embed", "kv_heads", None), "k_bias": ("kv_heads", None),
    "v_proj": ("embed", "kv_heads", None), "v_bias": ("kv_heads", None),
    "o_proj": ("heads", None, "embed"), "o_bias": ("embed",),
    "gate_proj": ("embed", "mlp"), "up_proj": ("embed", "mlp"), "down_proj": ("mlp", "embed"),
    "gate_bias": ("mlp",), "up_bias": ("mlp",), "down_bias": ("embed",),
    "weight": ("embed",),  # RMSNorm scales [d]
    # int8 weights' per-output-channel scales (core/models/quantize.py): their weight's output axes
    "q_proj_scale": ("heads", None), "k_proj_scale": ("kv_heads", None),
    "v_proj_scale": ("kv_heads", None), "o_proj_scale": ("embed",),
    "gate_proj_scale": ("mlp",), "up_proj_scale": ("mlp",), "down_proj_scale": ("embed",),
    "lm_head_scale": ("vocab",),
    # a parameter named within its module, where the bare name would be ambiguous: Qwen3's
    # per-head q/k norm scales [h], shared by all heads, so replicated
    "q_norm.weight": (None,), "k_norm.weight": (None,),
    # mixture-of-experts layers (core/models/moe.py): the router [d, e] stays whole; the experts'
    # stacks [d, e, f] / [e, f, d] split over the experts (expert parallelism)
    "router": ("embed", None),
    "expert_gate": ("embed", "experts", "expert_mlp"),
    "expert_up": ("embed", "experts", "expert_mlp"),
    "expert_down": ("experts", "expert_mlp", "embed"),
}
# KV pools: keys [pages, kv_heads, head_dim, page], values [pages, kv_heads, page, head_dim]
POOL_AXES: tuple[str | None, ...] = (None, "kv_heads", None, None)


def make_mesh(tensor_parallel: int) -> Mesh:
    devices = jax.devices()
    if not 1 <= tensor_parallel <= len(devices):
        raise ConfigError(f"--tensor-parallel {tensor_parallel}: {len(devices)} device(s) here")
    return Mesh(np.array(devices[:tensor_parallel]), (TENSOR_AXIS,))


def logical_rules(config: ModelConfig, tensor_parallel: int) -> dict[str, str | None]:
    """Logical axis → mesh axis (None: replicated). Axes that do not divide are replicated."""
    def split_if_divisible(size: int) -> str | None:
        return TENSOR_AXIS if size % tensor_parallel == 0 else None

    if config.num_heads % tensor_parallel:
        raise ConfigError(f"{config.num_heads} attention heads do not split over "
                          f"--tensor-parallel {tensor_parallel}")
    return {"heads": TENSOR_AXIS, "kv_heads": split_if_divisible(config.num_kv_heads),
            "mlp": split_if_divisible(config.intermediate_size),
            "vocab": split_if_divisible(config.vocab_size), "vocab_in": None, "embed": None,
            **_expert_rules(config, split_if_divisible)}


def _expert_rules(config: ModelConfig, split_if_divisible) -> dict[str, str | None]:
    """MoE layers: whole experts per device where the experts divide over the devices (each
    device runs its own experts on every token, and XLA all-reduces the weighted sum); else
    each expert's MLP width is split, Megatron-style; else they are replicated."""
    if config.moe is None:
        return {}
    experts = split_if_divisible(config.moe.num_experts)
    expert_mlp = None if experts else split_if_divisible(config.moe.expert_intermediate_size)
    return {"experts": experts, "expert_mlp": expert_mlp}


def _spec(axes: tuple[str | None, ...], rules: dict[str, str | None]) -> P:
    return P(*(rules.get(axis) if axis else None for axis in axes))


def shard_params(state, mesh: Mesh, rules: dict[str, str | None]):
    """The model state (nnx.State) with every parameter placed by its logical axes."""
    def place(path, leaf):
        names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey)]
        axes = PARAM_AXES.get(".".join(str(name) for name in names[-2:])) or next(
            (PARAM_AXES[name] for name in reversed(names) if name in PARAM_AXES), None)
        if axes is None or len(axes) != leaf.ndim:
            raise ConfigError(f"no sharding rule for parameter {jax.tree_util.keystr(path)}")
        return jax.device_put(leaf, NamedSharding(mesh, _spec(axes, rules)))

    return jax.tree_util.tree_map_with_path(place, state)


def pool_sharding(mesh: Mesh, rules: dict[str, str | None], kind: str = "gather"
                  ) -> NamedSharding:
    """Where each KV pool array lives: split with the key/value heads (axis 1 of the CPU
    layouts, axis 0 of the Pallas kernels' [k, pages, page_size, h])."""
    axes = POOL_AXES if gather_layout(kind) else ("kv_heads", None, None, None)
    return NamedSharding(mesh, _spec(axes, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())
