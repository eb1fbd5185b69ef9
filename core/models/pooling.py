"""Sentence-embedding pooling: how per-token hidden states become one vector per input.

Owns: `PoolingConfig` (read from a sentence-transformers directory: `modules.json`,
`1_Pooling/config.json`-style Pooling configs, a `Normalize` module, `sentence_bert_config.json`)
and the jittable, model-agnostic `pool()` used by the BERT encoder and by decoder-model
embeddings alike. No model weights here.

Shapes: b batch, t token positions, d hidden width. An attention mask is 1 for real tokens and 0
for padding; a row may be all padding (a padded batch slot) and still pools to finite numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from core.config import ConfigError

POOLING_MODES = ("cls", "mean", "max", "lasttoken")
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps

# sentence-transformers `pooling_mode_*` booleans (Pooling configs written before v5) → our mode
_LEGACY_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# modules.json "type" class names we understand. Old files say `sentence_transformers.models.X`,
# files saved by sentence-transformers ≥ 5 name the defining module
# (`sentence_transformers.sentence_transformer.modules.pooling.Pooling`): match on the class name.
_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class PoolingConfig:
    """How a sentence-transformers model turns token states into one embedding."""

    mode: str  # one of POOLING_MODES
    normalize: bool  # L2-normalize the pooled vector (a `Normalize` module follows the pooling)

    def __post_init__(self):
        if self.mode not in POOLING_MODES:
            raise ConfigError(f"pooling mode {self.mode!r} is not supported; "
                              f"supported: {', '.join(POOLING_MODES)}")


@dataclass(frozen=True)
class SentenceTransformerLayout:
    """What a sentence-transformers directory says beyond the Hugging Face checkpoint."""

    transformer_dir: Path  # where config.json and the safetensors live (often the root itself)
    pooling: PoolingConfig  # pooling and normalization after the transformer
    max_seq_len_tokens: int | None  # sentence-transformers' truncation length; None: not stated


# Without modules.json (a plain Hugging Face encoder) we pool like sentence-transformers does
# when it wraps such a model itself (mean over real tokens) and, unlike it, L2-normalize: cosine
# similarity is what embeddings are used for, and the OpenAI embeddings API returns unit vectors.
DEFAULT_POOLING = PoolingConfig(mode="mean", normalize=True)


def read_sentence_transformer_layout(model_dir: Path) -> SentenceTransformerLayout:
    """Parse `modules.json` (Transformer → Pooling → optional Normalize) of `model_dir`.

    Any other module (Dense, LayerNorm, Router…) would change the embedding, so it is refused.
    """
    model_dir = Path(model_dir)
    modules_path = model_dir / "modules.json"
    if not modules_path.exists():
        return SentenceTransformerLayout(model_dir, DEFAULT_POOLING,
                                         _max_seq_length(model_dir))
    modules = sorted(json.loads(modules_path.read_text()), key=lambda m: m.get("idx", 0))
    kinds = [_module_kind(module, modules_path) for module in modules]
    if kinds.count("Transformer") != 1 or kinds[0] != "Transformer":
        raise ConfigError(f"{modules_path}: expected one Transformer module first, got {kinds}")
    if kinds.count("Pooling") != 1 or kinds[1] != "Pooling":
        raise ConfigError(f"{modules_path}: expected a Pooling module after the Transformer, "
                          f"got {kinds}")
    if kinds[2:] not in ([], ["Normalize"]):
        raise ConfigError(f"{modules_path}: only a Normalize module may follow the Pooling, "
                          f"got {kinds}")
    transformer_dir = model_dir / modules[0].get("path", "")
    pooling_config = model_dir / modules[1].get("path", "") / "config.json"
    if not pooling_config.is_file():
        raise ConfigError(f"{modules_path}: the Pooling module has no {pooling_config}")
    mode = _pooling_mode(json.loads(pooling_config.read_text()), pooling_config)
    return SentenceTransformerLayout(
        transformer_dir=transformer_dir,
        pooling=PoolingConfig(mode=mode, normalize=kinds[-1] == "Normalize"),
        max_seq_len_tokens=_max_seq_length(transformer_dir),
    )


def _module_kind(module: dict, modules_path: Path) -> str:
    module_type = str(module.get("type", ""))
    class_name = module_type.rsplit(".", 1)[-1]
    if not module_type.startswith("sentence_transformers.") or class_name not in _KNOWN_MODULES:
        raise ConfigError(f"{modules_path}: module type {module_type!r} is not supported; "
                          f"supported: {', '.join(_KNOWN_MODULES)}")
    return class_name


def _pooling_mode(raw: dict, path: Path) -> str:
    """One mode from a Pooling config: `pooling_mode` (new) or `pooling_mode_*` booleans (old)."""
    if "pooling_mode" in raw:
        modes = raw["pooling_mode"]
        modes = [modes] if isinstance(modes, str) else list(modes)
    else:
        modes = [mode for key, mode in _LEGACY_MODE_KEYS.items() if raw.get(key, False)]
        modes = modes or ["mean"]  # sentence-transformers' own default
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ConfigError(f"{path}: pooling {modes} is not supported; "
                          f"supported: one of {', '.join(POOLING_MODES)}")
    return modes[0]


def _max_seq_length(transformer_dir: Path) -> int | None:
    """`max_seq_length` of sentence_bert_config.json, else the tokenizer's `model_max_length`
    (what sentence-transformers ≥ 5 falls back to), else None. The caller caps it at the model's
    position table."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        path = transformer_dir / name
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


# ---------------------------------------------------------------------------------------------
# Pooling (jittable; `mode` and `normalize` are static)


def pool(hidden: jax.Array, attention_mask: jax.Array, mode: str, normalize: bool) -> jax.Array:
    """hidden [b, t, d], attention_mask [b, t] → [b, d] float32, as sentence-transformers pools.

    mean: sum of real tokens / their count; cls: the first real token (position 0 under right
    padding); max: elementwise max over real tokens; lasttoken: the last real token (decoders).
    All-padding rows give zeros (normalized zeros stay zeros), never NaN or -inf.
    """
    hidden = hidden.astype(jnp.float32)
    mask = attention_mask.astype(jnp.bool_)  # [b, t]
    num_tokens = jnp.sum(mask, axis=1)  # [b]
    if mode == "mean":
        summed = jnp.einsum("btd,bt->bd", hidden, mask.astype(jnp.float32))
        pooled = summed / jnp.maximum(num_tokens, 1).astype(jnp.float32)[:, None]
    elif mode == "cls":
        first = jnp.argmax(mask, axis=1)  # [b]; 0 for an all-padding row
        pooled = jnp.take_along_axis(hidden, first[:, None, None], axis=1)[:, 0]
        pooled = jnp.where(num_tokens[:, None] > 0, pooled, 0.0)
    elif mode == "max":
        masked = jnp.where(mask[:, :, None], hidden, -jnp.inf)
        pooled = jnp.where(num_tokens[:, None] > 0, jnp.max(masked, axis=1), 0.0)
    elif mode == "lasttoken":
        positions = jnp.arange(mask.shape[1])[None, :]
        last = jnp.max(jnp.where(mask, positions, 0), axis=1)  # [b]; works for left padding too
        pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        pooled = jnp.where(num_tokens[:, None] > 0, pooled, 0.0)
    else:
        raise ValueError(f"pooling mode {mode!r}: expected one of {POOLING_MODES}")
    if normalize:
        pooled = l2_normalize(pooled)
    return pooled


def l2_normalize(x: jax.Array) -> jax.Array:
    """x [..., d] / max(‖x‖₂, 1e-12), as torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, NORMALIZE_EPS)
