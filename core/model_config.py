"""The shape of a served checkpoint, read from its Hugging Face `config.json`.

Owns: `ModelConfig` (a decoder's widths, heads, RoPE, norms and family switches), the
architecture lists (which families the core serves, which are encoders), `ConfigError`, and the
readers of `config.json` / `generation_config.json`. Family-specific keys are parsed here, once;
nothing below re-reads `config.json`. No JAX at import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MOE_ARCHITECTURES = ("Qwen3MoeForCausalLM", "MixtralForCausalLM")  # mixture-of-experts decoders
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM", "Gemma3ForCausalLM",
                           "Gemma3ForConditionalGeneration",  # its text part only
                           *MOE_ARCHITECTURES)
SUPPORTED_DTYPES = ("float32", "bfloat16")
ENCODER_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining")
CROSS_ENCODER_ARCHITECTURES = ("BertForSequenceClassification",
                               "XLMRobertaForSequenceClassification",
                               "RobertaForSequenceClassification")


class ConfigError(ValueError):
    """A model directory or flag the core cannot serve."""


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling (`rope_type` "linear" or "llama3")."""

    rope_type: str  # "linear" or "llama3"
    factor: float  # context extension factor
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position_embeddings: int = 8192  # llama3 only: pre-training context length


@dataclass(frozen=True)
class MoeConfig:
    """The mixture-of-experts MLPs of a Qwen3-MoE or Mixtral checkpoint: each token goes to the
    `num_experts_per_tok` experts its router scores highest (a float32 softmax over all experts,
    then top-k), weighted by those probabilities, renormalized to sum to 1 where
    `normalize_top_k` (Mixtral always; Qwen3-MoE per `norm_topk_prob`)."""

    num_experts: int  # experts E per MoE layer
    num_experts_per_tok: int  # experts each token is routed to (top-k)
    expert_intermediate_size: int  # each expert's MLP width
    normalize_top_k: bool  # renormalize the top-k probabilities to sum to 1
    sparse_layers: tuple[int, ...]  # indices of the layers whose MLP is the experts

    def is_sparse(self, layer: int) -> bool:
        return layer in self.sparse_layers


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-family decoder (Llama, Mistral, Qwen2, Qwen3 dense, and Gemma 3 with
    its `gemma` settings), as read from a Hugging Face `config.json`."""

    architecture: str  # e.g. "LlamaForCausalLM"
    vocab_size: int  # rows of the embedding table
    hidden_size: int  # model width D
    intermediate_size: int  # MLP width F
    num_layers: int  # decoder blocks
    num_heads: int  # query heads N
    num_kv_heads: int  # key/value heads K (GQA when K < N)
    head_dim: int  # per-head width H
    rms_norm_eps: float  # RMSNorm epsilon
    rope_theta: float  # RoPE base
    max_position_embeddings: int  # the model's context length
    tie_word_embeddings: bool  # lm_head shares the embedding table
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2, Llama attention_bias)
    o_bias: bool = False  # bias on the output projection (Llama attention_bias)
    mlp_bias: bool = False  # biases on the MLP projections (Llama mlp_bias)
    # RMSNorm over each head's q and k (scales of width H shared by all heads), before RoPE (Qwen3)
    qk_norm: bool = False
    sliding_window: int | None = None  # attend to at most this many previous tokens (Mistral)
    rope_scaling: RopeScaling | None = None  # None: plain RoPE
    moe: MoeConfig | None = None  # mixture-of-experts MLPs (Qwen3-MoE, Mixtral); None: dense
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()  # any of these ends generation
    dtype: str = "float32"  # checkpoint dtype ("float32" or "bfloat16")
    is_demo: bool = False  # the built-in random-weights demo model
    gemma: Gemma3Settings | None = None  # Gemma 3's own switches (core/models/gemma3.py)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """Bytes of keys and values one token occupies across all layers."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_hf_dir(cls, model_dir: Path, raw: dict | None = None) -> ModelConfig:
        """From a checkpoint directory; `raw` is its config.json when already read."""
        raw = raw if raw is not None else read_hf_config(model_dir)
        generation_path = Path(model_dir) / "generation_config.json"
        generation = json.loads(generation_path.read_text()) if generation_path.exists() else {}
        return cls.from_hf_dict(raw, generation)

    @classmethod
    def from_hf_dict(cls, raw: dict, generation: dict | None = None) -> ModelConfig:
        architectures = raw.get("architectures") or []
        architecture = architectures[0] if architectures else ""
        if architecture in GEMMA3_MULTIMODAL_ARCHITECTURES:
            raw = _gemma3_text_part(raw)
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(f"architecture {architecture!r} is not supported; "
                              f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        is_qwen2 = architecture == "Qwen2ForCausalLM"
        is_qwen = is_qwen2 or architecture == "Qwen3ForCausalLM"
        if architecture in GEMMA3_ARCHITECTURES:
            raw = {**GEMMA3_DEFAULTS, **raw}  # keys a Gemma 3 config.json may leave out
        is_qwen3 = architecture in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM")
        num_heads = raw["num_attention_heads"]
        # (Gemma 3's RoPE is per layer type: `_gemma3_fields` reads it)
        rope = _rope_settings(raw) if architecture not in GEMMA3_ARCHITECTURES else (0.0, None)
        sliding_window = _qwen_sliding_window(raw) if is_qwen else raw.get("sliding_window")
        if architecture == "Qwen3MoeForCausalLM":  # transformers: every layer or none slides
            sliding_window = raw.get("sliding_window", 4096) if raw.get(
                "use_sliding_window") else None
        dtype = str(raw.get("torch_dtype") or raw.get("dtype") or "float32")
        fields = dict(
            architecture=architecture,
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=raw.get("num_key_value_heads") or num_heads,
            head_dim=raw.get("head_dim") or raw["hidden_size"] // num_heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope[0],
            rope_scaling=rope[1],
            moe=_moe_config(raw, architecture),
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            qkv_bias=is_qwen2 or bool(raw.get("attention_bias", False)),
            o_bias=(not is_qwen2) and bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            qk_norm=is_qwen3,
            sliding_window=sliding_window,
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=_eos_ids(raw, generation or {}),
            dtype=dtype if dtype in SUPPORTED_DTYPES else "float32",
            is_demo=bool(raw.get("tandem_demo", False)),
        )
        if architecture in GEMMA3_ARCHITECTURES:
            fields.update(_gemma3_fields(raw))
        return cls(**fields)


def _qwen_sliding_window(raw: dict) -> int | None:
    """Qwen2/Qwen3's window: off unless `use_sliding_window`, and then only on the layers from
    `max_window_layers` on (or as `layer_types` lists them). One window for every layer is all
    the model does, so a mix of sliding and full layers is refused. Missing keys take
    transformers' defaults (window 4096, max_window_layers 28)."""
    window = raw.get("sliding_window", 4096)
    if not raw.get("use_sliding_window", False) or window is None:
        return None
    num_layers = raw["num_hidden_layers"]
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if i >= raw.get("max_window_layers", 28) else "full_attention"
        for i in range(num_layers)]
    if "sliding_attention" not in layer_types:
        return None
    if "full_attention" in layer_types:
        raise ConfigError("sliding-window attention on some layers only (max_window_layers "
                          f"{raw.get('max_window_layers', 28)} of {num_layers}) is not supported")
    return window


def _moe_config(raw: dict, architecture: str) -> MoeConfig | None:
    """The experts of a Qwen3-MoE or Mixtral config.json (None for dense families), with
    transformers' defaults for missing keys. transformers 5 writes `num_local_experts` for
    both families; Qwen3-MoE checkpoints on the Hub name it `num_experts`."""
    if architecture not in MOE_ARCHITECTURES:
        return None
    num_layers = raw["num_hidden_layers"]
    if architecture == "MixtralForCausalLM":
        config = MoeConfig(
            num_experts=raw.get("num_local_experts") or raw.get("num_experts") or 8,
            num_experts_per_tok=raw.get("num_experts_per_tok", 2),
            expert_intermediate_size=raw["intermediate_size"], normalize_top_k=True,
            sparse_layers=tuple(range(num_layers)))
    else:
        step = raw.get("decoder_sparse_step") or 1
        dense_layers = set(raw.get("mlp_only_layers") or ())
        config = MoeConfig(
            num_experts=raw.get("num_experts") or raw.get("num_local_experts") or 128,
            num_experts_per_tok=raw.get("num_experts_per_tok", 8),
            expert_intermediate_size=raw.get("moe_intermediate_size", 768),
            normalize_top_k=bool(raw.get("norm_topk_prob", False)),
            sparse_layers=tuple(i for i in range(num_layers)
                                if i not in dense_layers and (i + 1) % step == 0))
    if not 1 <= config.num_experts_per_tok <= config.num_experts:
        raise ConfigError(f"num_experts_per_tok {config.num_experts_per_tok} is not within "
                          f"1..{config.num_experts} (the experts of {architecture})")
    return config


def read_hf_config(model_dir: Path) -> dict:
    """A checkpoint's config.json (ConfigError when it is missing or not JSON)."""
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the model's config ({error})") from error


def is_encoder_config(raw: dict) -> bool:
    """A BERT-family checkpoint (served for Embed only) rather than a decoder."""
    return not is_cross_encoder_config(raw) and (
        bool(set(raw.get("architectures") or []) & set(ENCODER_ARCHITECTURES))
        or raw.get("model_type") == "bert")


def is_cross_encoder_config(raw: dict) -> bool:
    """A BERT / (XLM-)RoBERTa cross-encoder checkpoint (served for Rerank only)."""
    return bool(set(raw.get("architectures") or []) & set(CROSS_ENCODER_ARCHITECTURES))


def _rope_settings(raw: dict) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from either the classic keys or transformers 5's `rope_parameters`."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = dict(raw.get("rope_scaling") or {}) or params
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type in (None, "default"):
        return theta, None
    if rope_type not in ("linear", "llama3"):
        raise ConfigError(f"rope scaling type {rope_type!r} is not supported (linear, llama3)")
    return theta, RopeScaling(
        rope_type=rope_type,
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(scaling.get("original_max_position_embeddings", 8192)),
    )


def _eos_ids(raw: dict, generation: dict) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (generation.get("eos_token_id"), raw.get("eos_token_id")):
        for token_id in source if isinstance(source, list) else [source]:
            if token_id is not None and token_id not in ids:
                ids.append(int(token_id))
    return tuple(ids)


# -- Gemma 3 -----------------------------------------------------------------------------------

# Gemma3ForConditionalGeneration (gemma-3-4b/12b/27b): its language model is served, text only;
# its vision tower's tensors are left unread (core/models/gemma3.py: `text_tensor_name`)
GEMMA3_MULTIMODAL_ARCHITECTURES = ("Gemma3ForConditionalGeneration",)
GEMMA3_ARCHITECTURES = ("Gemma3ForCausalLM", *GEMMA3_MULTIMODAL_ARCHITECTURES)
# transformers' Gemma3TextConfig defaults, for the keys a config.json may omit (the 4B's
# text_config lists only hidden_size, intermediate_size, num_hidden_layers, rope_scaling and
# sliding_window)
GEMMA3_DEFAULTS = {"vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
                   "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                   "head_dim": 256, "rms_norm_eps": 1e-6, "max_position_embeddings": 131_072,
                   "tie_word_embeddings": True, "bos_token_id": 2, "eos_token_id": 1}
# hidden_activation → GELU's tanh approximation (True) or the exact erf form (False)
GEMMA3_ACTIVATIONS = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu_fast": True,
                      "gelu": False}


@dataclass(frozen=True)
class Gemma3Settings:
    """What Gemma 3 adds to the Llama-shaped decoder (core/models/gemma3.py). The global layers
    take ModelConfig's `rope_theta` and `rope_scaling`; `qk_norm` is on; ModelConfig's single
    `sliding_window` stays None (the windows are per layer here)."""

    query_pre_attn_scalar: float  # attention scores are scaled by its -1/2 power, not head_dim's
    layer_windows: tuple[int | None, ...]  # per layer: its sliding window (tokens), None: global
    local_rope_theta: float  # RoPE base of the sliding layers (plain RoPE, no scaling)
    gelu_approximate: bool  # GeGLU's GELU: the tanh approximation (gelu_pytorch_tanh) or exact
    final_logit_softcapping: float | None = None  # logits → cap·tanh(logits / cap) when set


def _gemma3_text_part(raw: dict) -> dict:
    """A Gemma3ForConditionalGeneration config.json as its language model's: `text_config`, with
    the outer config's architecture and the keys it sets for the whole model (dtype, token ids,
    tying) where the text config leaves them out. `vision_config` is not read."""
    text = dict(raw.get("text_config") or {})
    for key in ("torch_dtype", "dtype", "bos_token_id", "eos_token_id", "pad_token_id",
                "tie_word_embeddings"):
        if key in raw and text.get(key) is None:
            text[key] = raw[key]
    return {**text, "architectures": raw["architectures"]}


def _gemma3_fields(raw: dict) -> dict:
    """ModelConfig fields of a Gemma 3 text config.json (`raw` with GEMMA3_DEFAULTS filled):
    transformers' hub keys (`rope_theta`, `rope_local_base_freq`, `rope_scaling`,
    `sliding_window_pattern` or `layer_types`) or its own v5 form (`rope_parameters` per layer
    type). Attention-logit softcapping (Gemma 2's) and bidirectional attention (EmbeddingGemma)
    are refused."""
    if raw.get("attn_logit_softcapping") is not None:
        raise ConfigError("attn_logit_softcapping is not supported (Gemma 3 checkpoints set it "
                          f"null; this one sets {raw['attn_logit_softcapping']})")
    if raw.get("use_bidirectional_attention"):
        raise ConfigError("use_bidirectional_attention (an embedding Gemma) is not supported")
    activation = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in GEMMA3_ACTIVATIONS:
        raise ConfigError(f"hidden_activation {activation!r} is not supported "
                          f"({', '.join(GEMMA3_ACTIVATIONS)})")
    num_layers = raw["num_hidden_layers"]
    pattern = int(raw.get("sliding_window_pattern") or 6)
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(num_layers)]
    if len(layer_types) != num_layers or not set(layer_types) <= {"sliding_attention",
                                                                  "full_attention"}:
        raise ConfigError(f"layer_types must list sliding_attention or full_attention for each "
                          f"of the {num_layers} layers; got {layer_types}")
    window = raw.get("sliding_window", 4096)
    params = dict(raw.get("rope_parameters") or {})
    full = dict(params.get("full_attention") or ({} if "sliding_attention" in params else params))
    local = dict(params.get("sliding_attention") or {})
    theta, scaling = _rope_settings({
        "rope_theta": full.pop("rope_theta", raw.get("rope_theta", 1_000_000.0)),
        "rope_scaling": full if full.get("rope_type", full.get("type")) else raw.get(
            "rope_scaling")})
    if local.get("rope_type", "default") != "default":
        raise ConfigError(f"rope scaling on the sliding layers ({local['rope_type']!r}) is not "
                          "supported")
    final_cap = raw.get("final_logit_softcapping")
    return dict(
        rope_theta=theta, rope_scaling=scaling, qk_norm=True, sliding_window=None,
        gemma=Gemma3Settings(
            query_pre_attn_scalar=float(raw.get("query_pre_attn_scalar", 256)),
            layer_windows=tuple(window if kind == "sliding_attention" else None
                                for kind in layer_types),
            local_rope_theta=float(local.get("rope_theta",
                                             raw.get("rope_local_base_freq", 10_000.0))),
            gelu_approximate=GEMMA3_ACTIVATIONS[activation],
            final_logit_softcapping=None if final_cap is None else float(final_cap)))
