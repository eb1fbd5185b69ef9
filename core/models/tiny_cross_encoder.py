"""Tiny random cross-encoder checkpoints for tests: BERT's (`BertForSequenceClassification`) and
XLM-RoBERTa's (`XLMRobertaForSequenceClassification`).

Owns: their configs (2 layers of width 32, 32 input positions, one label), tokenizers trained
locally on the tiny models' corpus — BERT's WordPiece (`[CLS] query [SEP] document [SEP]`, with
the document's token type 1, as BERT tokenizers do for pairs) and XLM-RoBERTa's Unigram with
Metaspace (`<s> query </s></s> document </s>`, no token types, its special ids 0-3 and a position
table 2 rows longer, as the real ones have) — and deterministic random weights named as Hugging
Face names them, written with safetensors. The weights are scaled so that different
pairs get clearly different scores (a ranking test needs them apart). Nothing here downloads
anything or imports torch or transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from core.models.tiny import _CORPUS

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
FAMILIES = ("bert", "xlm-roberta")
# XLM-RoBERTa's special tokens, at the ids the real tokenizer gives them (<mask> comes last)
XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
XLMR_PAD_ID = 1
VOCAB_TARGET = 600
DIMS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=32)
# sentence-transformers' own names of the activations a cross-encoder config may record
ACTIVATION_PATHS = {"sigmoid": "torch.nn.modules.activation.Sigmoid",
                    "identity": "torch.nn.modules.linear.Identity",
                    "tanh": "torch.nn.modules.activation.Tanh"}


def build_wordpiece_tokenizer(vocab_target: int = VOCAB_TARGET):
    """A lower-casing BERT WordPiece tokenizer (a `tokenizers.Tokenizer`), trained here."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_target, show_progress=False,
                                        special_tokens=[PAD, UNK, CLS, SEP, MASK])
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0", pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return tok


def build_xlmr_tokenizer(vocab_target: int = VOCAB_TARGET):
    """An XLM-RoBERTa-style Unigram tokenizer (a `tokenizers.Tokenizer`), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_target, show_progress=False,
                                      special_tokens=list(XLMR_SPECIALS), unk_token="<unk>")
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    tok.add_special_tokens(["<mask>"])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", bos), ("</s>", eos)])
    return tok


def cross_encoder_config(vocab_size: int, activation: str | None = None,
                         family: str = "bert") -> dict:
    """config.json of the tiny cross-encoder; `activation` (one of ACTIVATION_PATHS) is recorded
    as sentence-transformers records it, None leaves its default (Sigmoid for one label)."""
    xlmr = family == "xlm-roberta"
    cfg = {"architectures": ["XLMRobertaForSequenceClassification" if xlmr
                             else "BertForSequenceClassification"],
           "model_type": family, "vocab_size": vocab_size, **DIMS,
           "max_position_embeddings": DIMS["max_position_embeddings"] + (XLMR_PAD_ID + 1) * xlmr,
           "hidden_act": "gelu", "type_vocab_size": 1 if xlmr else 2,
           "layer_norm_eps": 1e-5 if xlmr else 1e-12,
           "pad_token_id": XLMR_PAD_ID if xlmr else 0, "hidden_dropout_prob": 0.1,
           "attention_probs_dropout_prob": 0.1, "classifier_dropout": None,
           "initializer_range": 0.02, "position_embedding_type": "absolute",
           "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "dtype": "float32"}
    if xlmr:
        cfg.update(bos_token_id=0, eos_token_id=2)
    if activation is not None:
        cfg["sentence_transformers"] = {"activation_fn": ACTIVATION_PATHS[activation]}
    return cfg


def random_cross_encoder_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 weights named as `BertForSequenceClassification` (or, for an XLM-RoBERTa
    config, `XLMRobertaForSequenceClassification`) saves them."""
    rng = np.random.default_rng(seed)
    xlmr = cfg["model_type"] == "xlm-roberta"
    top = "roberta" if xlmr else "bert"
    d, f = cfg["hidden_size"], cfg["intermediate_size"]

    def normal(shape, std):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def linear(name, out_dim, in_dim, std=None):
        w[f"{name}.weight"] = normal((out_dim, in_dim), std or 1.5 / in_dim ** 0.5)
        w[f"{name}.bias"] = normal((out_dim,), 0.1)

    def layer_norm(name, width=d):
        w[f"{name}.weight"] = 1.0 + normal((width,), 0.1)
        w[f"{name}.bias"] = normal((width,), 0.1)

    w = {f"{top}.embeddings.word_embeddings.weight": normal((cfg["vocab_size"], d), 1.0),
         f"{top}.embeddings.position_embeddings.weight": normal(
             (cfg["max_position_embeddings"], d), 0.3),
         f"{top}.embeddings.token_type_embeddings.weight": normal((cfg["type_vocab_size"], d),
                                                                  0.5)}
    layer_norm(f"{top}.embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"{top}.encoder.layer.{i}."
        for part in ("query", "key", "value"):
            linear(p + f"attention.self.{part}", d, d)
        linear(p + "attention.output.dense", d, d)
        layer_norm(p + "attention.output.LayerNorm")
        linear(p + "intermediate.dense", f, d)
        linear(p + "output.dense", d, f)
        layer_norm(p + "output.LayerNorm")
    dense, out = ("classifier.dense", "classifier.out_proj") if xlmr else ("bert.pooler.dense",
                                                                             "classifier")
    linear(dense, d, d)
    linear(out, len(cfg["id2label"]), d, std=2.0 / d ** 0.5)
    return w


def write_tiny_cross_encoder(out_dir: Path, *, seed: int = 0, activation: str | None = None,
                             family: str = "bert") -> Path:
    """Write a complete Hugging Face cross-encoder directory of `family` (one of FAMILIES) and
    return it."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: one of {FAMILIES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_xlmr_tokenizer() if family == "xlm-roberta" else build_wordpiece_tokenizer()
    cfg = cross_encoder_config(tok.get_vocab_size(), activation, family)
    save_file(random_cross_encoder_weights(cfg, seed), str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tok.save(str(out_dir / "tokenizer.json"))
    if family == "xlm-roberta":
        _write_xlmr_tokenizer_files(out_dir)
        return out_dir
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "cls_token": CLS, "sep_token": SEP,
        "pad_token": PAD, "unk_token": UNK, "mask_token": MASK, "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps({
        "cls_token": CLS, "sep_token": SEP, "pad_token": PAD, "unk_token": UNK,
        "mask_token": MASK}, indent=2) + "\n")
    return out_dir


def _write_xlmr_tokenizer_files(out_dir: Path) -> None:
    specials = dict(zip(("bos_token", "pad_token", "eos_token", "unk_token"), XLMR_SPECIALS,
                        strict=True))
    specials.update(cls_token="<s>", sep_token="</s>", mask_token="<mask>")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", **specials,
        "clean_up_tokenization_spaces": False,
        "model_max_length": DIMS["max_position_embeddings"],
        "model_input_names": ["input_ids", "attention_mask"]}, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
