"""The BERT and XLM-RoBERTa cross-encoders against sentence-transformers' `CrossEncoder.predict`.

One tiny random `BertForSequenceClassification` (core/models/tiny_cross_encoder.py, with its own
WordPiece tokenizer), and one `XLMRobertaForSequenceClassification` (Unigram tokenizer, positions
after the padding id, no token types, RoBERTa's head names), are scored on varied pairs — a pair
longer than the model's 32 positions truncated as sentence-transformers truncates it, padded and
packed batches — within 1e-4 of `CrossEncoder.predict`, with the same ranking; the activation
recorded in config.json is honoured; the loader's refusals.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax.numpy as jnp  # noqa: E402

from core.model_config import ConfigError  # noqa: E402
from core.models.cross_encoder import load_cross_encoder, score_pairs  # noqa: E402
from core.models.tiny_cross_encoder import write_tiny_cross_encoder  # noqa: E402

sentence_transformers = pytest.importorskip("sentence_transformers")
transformers = pytest.importorskip("transformers")

QUERY = "What does the quick brown fox do?"
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model reads text as tokens.",
    "Hello, world! How are you today?",
    "Français: héllo, café, crème brûlée, à bientôt.",
    "日本語: こんにちは世界",
    "fox",
    " ".join(["Serving many requests at once needs a scheduler and a cache."] * 6),  # truncated
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest.fixture(scope="module")
def xlmr_checkpoint(tmp_path_factory):
    return write_tiny_cross_encoder(tmp_path_factory.mktemp("xlmr"), seed=2,
                                    family="xlm-roberta")


def _ours(model_dir, pairs, packed=False):
    model, config = load_cross_encoder(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    batch = tokenizer([q for q, _ in pairs], [d for _, d in pairs], padding=True,
                      truncation="longest_first", max_length=config.max_seq_len_tokens,
                      return_tensors="np")
    types = batch.get("token_type_ids", np.zeros_like(batch["input_ids"]))  # XLM-R: none
    arrays = [jnp.asarray(np.pad(array.astype(np.int32), ((0, 1), (0, 0))))  # + a pad row
              for array in (batch["input_ids"], batch["attention_mask"], types)]
    num_packed = int(np.asarray(arrays[1]).sum()) + 3 if packed else None
    scores = np.asarray(score_pairs(model, *arrays, config.activation, num_packed))
    assert scores.shape == (len(pairs) + 1, 1) and np.all(np.isfinite(scores))
    return scores[:-1, 0], config


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_scores_match_sentence_transformers_cross_encoder(request, family):
    checkpoint = request.getfixturevalue("checkpoint" if family == "bert" else "xlmr_checkpoint")
    pairs = [(QUERY, document) for document in DOCUMENTS] + [("cats", "dogs"), ("42", "3.14")]
    reference = sentence_transformers.CrossEncoder(str(checkpoint), device="cpu").predict(
        pairs, batch_size=4)
    for packed in (False, True):
        ours, config = _ours(checkpoint, pairs, packed)
        assert config.encoder.position_offset == (2 if family == "xlm-roberta" else 0)
        assert config.activation == "Sigmoid" and config.num_labels == 1
        assert config.max_seq_len_tokens == 32
        np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
        assert list(np.argsort(-ours)) == list(np.argsort(-reference))
    assert np.ptp(reference) > 0.1  # the random weights tell the pairs apart


def test_activation_from_config_is_honoured(tmp_path):
    model_dir = write_tiny_cross_encoder(tmp_path, seed=1, activation="identity")
    pairs = [(QUERY, document) for document in DOCUMENTS[:3]]
    reference = sentence_transformers.CrossEncoder(str(model_dir), device="cpu").predict(pairs)
    ours, config = _ours(model_dir, pairs)
    assert config.activation == "Identity"
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    assert (ours < 0).any() or (ours > 1).any()  # raw logits, not probabilities


def test_loader_refusals(tmp_path, checkpoint):
    from safetensors.numpy import load_file, save_file

    model_dir = write_tiny_cross_encoder(tmp_path / "broken")
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["classifier.bias"]
    save_file(tensors, model_dir / "model.safetensors")
    with pytest.raises(ConfigError, match="lacks"):
        load_cross_encoder(model_dir)
    (model_dir / "modules.json").write_text(json.dumps([
        {"idx": 0, "path": "", "type": "sentence_transformers.base.modules.Transformer"},
        {"idx": 1, "path": "1_Dense", "type": "sentence_transformers.base.modules.Dense"}]))
    with pytest.raises(ConfigError, match="one Transformer module"):
        load_cross_encoder(model_dir)
    raw = json.loads((checkpoint / "config.json").read_text())
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({**raw, "architectures": ["BertModel"]}))
    with pytest.raises(ConfigError, match="not a cross-encoder"):
        load_cross_encoder(plain)
