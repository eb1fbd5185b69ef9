"""BERT-family cross-encoders (`BertForSequenceClassification`, and XLM-RoBERTa's / RoBERTa's
`…ForSequenceClassification`): one relevance score per pair.

Owns: `CrossEncoderConfig` (the encoder's `BertConfig`, the label count, the activation and the
truncation length, read from a Hugging Face / sentence-transformers directory), the Flax NNX
`CrossEncoder` (core/models/bert.py's encoder, then a tanh dense layer over the first token and
the output projection), `score_pairs()` (jittable at static shapes) and `load_cross_encoder()`.
BERT's head is its pooler (`pooler.dense`) then `classifier`; RoBERTa's classification head is
the same computation under other names (`classifier.dense`, then `classifier.out_proj`), so one
module serves both. Tokenizing the pairs is the caller's (BERT: `[CLS] query [SEP] document
[SEP]`, token types 0 then 1; XLM-RoBERTa: `<s> query </s></s> document </s>`, all type 0).

The activation follows sentence-transformers 6.2's `CrossEncoder`: the `activation_fn` recorded
in config_sentence_transformers.json, else in config.json's `sentence_transformers` block (or
its older `sbert_ce_default_activation_function` key), else Sigmoid for one label and Identity
for more. Like sentence-transformers without trust_remote_code, only torch's own activations are
honoured; a path outside `torch.` falls back to the default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from core.model_config import (
    CROSS_ENCODER_ARCHITECTURES,
    ConfigError,
    is_cross_encoder_config,
)
from core.models.bert import (
    IGNORED_TENSORS,
    BertConfig,
    BertModel,
    _fuse_qkv,
    _param,
    _read_checkpoint,
    _tensor_plan,
    _zeros,
    fill_parameters,
)

SUPPORTED_ARCHITECTURES = CROSS_ENCODER_ARCHITECTURES
# sentence-transformers' activation class names (the last part of a torch path) → ours
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "Sigmoid": jax.nn.sigmoid,
    "Identity": lambda x: x,
    "Tanh": jnp.tanh,
}
# the pooler is BERT's own (sentence embeddings ignore it; a cross-encoder reads it)
_READ_TENSORS = ("pooler.dense.weight", "pooler.dense.bias")
# the head's (dense, output) tensor names: BERT's (False) and RoBERTa's (True, position offset)
_HEAD_TENSORS = {False: ("pooler.dense", "classifier"),
                 True: ("classifier.dense", "classifier.out_proj")}


@dataclass(frozen=True)
class CrossEncoderConfig:
    """A cross-encoder: its encoder, its head and how its logits become scores."""

    encoder: BertConfig
    num_labels: int  # classifier outputs (a reranker has one)
    activation: str  # a key of ACTIVATIONS, applied to the logits
    max_seq_len_tokens: int  # pairs are truncated to this many tokens (longest first)


def read_cross_encoder_config(model_dir: Path) -> CrossEncoderConfig:
    model_dir = Path(model_dir)
    weights_dir = _weights_dir(model_dir)
    raw = json.loads((weights_dir / "config.json").read_text())
    if not is_cross_encoder_config(raw):
        raise ConfigError(f"{weights_dir}: architectures {raw.get('architectures')} is not a "
                          f"cross-encoder; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    encoder = BertConfig.from_hf_dict(raw, SUPPORTED_ARCHITECTURES)
    num_labels = len(raw["id2label"]) if raw.get("id2label") else int(raw.get("num_labels", 2))
    return CrossEncoderConfig(
        encoder=encoder, num_labels=num_labels,
        activation=_activation(model_dir, raw, num_labels),
        max_seq_len_tokens=min(_max_length(weights_dir) or encoder.max_input_tokens,
                               encoder.max_input_tokens))


def _weights_dir(model_dir: Path) -> Path:
    """Where config.json and the weights are: the directory, or the path of the one
    Transformer module of a sentence-transformers modules.json (any other module would change
    the scores, so it is refused)."""
    modules_path = model_dir / "modules.json"
    if not modules_path.exists():
        return model_dir
    modules = json.loads(modules_path.read_text())
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    if kinds != ["Transformer"]:
        raise ConfigError(f"{modules_path}: a cross-encoder must be one Transformer module; "
                          f"got {kinds}")
    return model_dir / modules[0].get("path", "")


def _activation(model_dir: Path, raw: dict, num_labels: int) -> str:
    """sentence-transformers' order (see the module docstring)."""
    st_config = model_dir / "config_sentence_transformers.json"
    saved = json.loads(st_config.read_text()).get("activation_fn") if st_config.exists() else None
    if saved and str(saved).startswith("torch."):
        return _activation_name(str(saved))
    block = raw.get("sentence_transformers") or {}
    path = block["activation_fn"] if "activation_fn" in block else raw.get(
        "sbert_ce_default_activation_function")
    if path and str(path).startswith("torch."):
        return _activation_name(str(path))
    return "Sigmoid" if num_labels == 1 else "Identity"


def _activation_name(path: str) -> str:
    name = path.rsplit(".", 1)[-1]
    if name not in ACTIVATIONS:
        raise ConfigError(f"activation {path!r} is not supported; supported: "
                          f"{', '.join(ACTIVATIONS)}")
    return name


def _max_length(weights_dir: Path) -> int | None:
    """sentence_bert_config.json's `max_seq_length`, else the tokenizer's `model_max_length`."""
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        path = weights_dir / name
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


class CrossEncoder(nnx.Module):
    def __init__(self, config: CrossEncoderConfig, rngs: nnx.Rngs):
        d = config.encoder.hidden_size
        self.encoder = BertModel(config.encoder, rngs)
        self.pooler_proj, self.pooler_bias = _param(rngs, (d, d)), _zeros((d,))
        self.classifier_proj = _param(rngs, (d, config.num_labels))
        self.classifier_bias = _zeros((config.num_labels,))

    def __call__(self, token_ids: jax.Array, attention_mask: jax.Array,
                 token_type_ids: jax.Array, num_packed_tokens: int | None = None
                 ) -> jax.Array:
        """[b, t] int32 each → logits [b, num_labels] (see BertModel for the arguments)."""
        hidden = self.encoder(token_ids, attention_mask, num_packed_tokens, token_type_ids)
        pooled = jnp.tanh(hidden[:, 0] @ self.pooler_proj[...] + self.pooler_bias[...])
        return pooled @ self.classifier_proj[...] + self.classifier_bias[...]


def score_pairs(model: CrossEncoder, token_ids: jax.Array, attention_mask: jax.Array,
                token_type_ids: jax.Array, activation: str,
                num_packed_tokens: int | None = None) -> jax.Array:
    """Pairs as [b, t] token ids, mask and token types → scores [b, num_labels] float32 (the
    activation applied). Pure; jit it with `activation` and `num_packed_tokens` static. Rows of
    an all-zero mask (batch padding) give finite numbers."""
    logits = model(token_ids, attention_mask, token_type_ids, num_packed_tokens)
    return ACTIVATIONS[activation](logits)


def load_cross_encoder(model_dir: Path) -> tuple[CrossEncoder, CrossEncoderConfig]:
    """A Hugging Face / sentence-transformers cross-encoder directory → (model, config), with
    every parameter filled and every checkpoint tensor accounted for."""
    config = read_cross_encoder_config(Path(model_dir))
    weights_dir = _weights_dir(Path(model_dir))
    checkpoint = weights_dir / "model.safetensors"
    if not checkpoint.exists():
        raise ConfigError(f"{weights_dir}: no model.safetensors (sharded or .bin checkpoints "
                          "are not supported for cross-encoders)")
    encoder = config.encoder
    plan = _tensor_plan(encoder)
    dense, out = _HEAD_TENSORS[encoder.position_offset > 0]
    plan.update({f"{dense}.weight": ("pooler_proj", lambda w: w.T),
                 f"{dense}.bias": ("pooler_bias", lambda w: w),
                 f"{out}.weight": ("classifier_proj", lambda w: w.T),
                 f"{out}.bias": ("classifier_bias", lambda w: w)})
    ignored = tuple(name for name in IGNORED_TENSORS if name not in _READ_TENSORS)
    arrays = _read_checkpoint(checkpoint, plan, ignored)
    head = {name: arrays.pop(name) for name in
            ("pooler_proj", "pooler_bias", "classifier_proj", "classifier_bias")}
    _fuse_qkv(arrays, encoder.num_layers)
    arrays = {f"encoder.{name}": array for name, array in arrays.items()} | head
    model = fill_parameters(nnx.eval_shape(lambda: CrossEncoder(config, nnx.Rngs(0))), arrays,
                            checkpoint)
    return model, config
