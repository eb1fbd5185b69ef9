"""Tiny random checkpoints (core/models/tiny.py) load cleanly in Hugging Face transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT))

from core.models import tiny  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

SAMPLE = "héllo 日本語 🙂 world"
BOS_ID, EOS_ID, IM_START_ID, IM_END_ID, PAD_ID = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {v: tiny.write_tiny_model(root / v, v, seed=0) for v in tiny.VARIANTS}


def _load(path: Path):
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, output_loading_info=True)
    return model.eval(), info


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def test_import_loads_neither_torch_nor_transformers():
    code = ("import sys, core.models.tiny; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


@pytest.mark.parametrize("variant", tiny.VARIANTS)
def test_weights_load_without_missing_or_unexpected(model_dirs, variant):
    model, info = _load(model_dirs[variant])
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not info["mismatched_keys"] and not info["error_msgs"]
    cfg = json.loads((model_dirs[variant] / "config.json").read_text())
    assert type(model).__name__ == cfg["architectures"][0]
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(model_dirs[variant]))
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == cfg["tie_word_embeddings"]
    from safetensors.numpy import load_file
    written = load_file(model_dirs[variant] / "model.safetensors")
    loaded = _state(model)
    for name, array in written.items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
    with torch.no_grad():
        logits = model(torch.tensor([[BOS_ID, 100, 200, 300]])).logits
    assert torch.isfinite(logits).all() and logits[0, -1].std() > 0.1  # not near-uniform


def test_variant_specifics(model_dirs):
    qwen = AutoConfig.from_pretrained(model_dirs["qwen2"])
    assert qwen.sliding_window is None and qwen.rms_norm_eps == 1e-6
    model, _ = _load(model_dirs["qwen2"])
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert AutoConfig.from_pretrained(model_dirs["mistral"]).sliding_window == 32
    llama = AutoConfig.from_pretrained(model_dirs["llama"])
    assert (llama.hidden_size, llama.num_hidden_layers, llama.num_key_value_heads) == (64, 2, 2)
    assert llama.head_dim == 16 and llama.rope_parameters["rope_theta"] == 10000.0
    qwen3, _ = _load(model_dirs["qwen3"])
    cfg = qwen3.config
    assert cfg.head_dim == 32 != cfg.hidden_size // cfg.num_attention_heads
    assert cfg.tie_word_embeddings and cfg.sliding_window is None and not cfg.attention_bias
    attention = qwen3.model.layers[0].self_attn
    assert attention.q_proj.bias is None and attention.q_proj.weight.shape == (4 * 32, 64)
    assert attention.q_norm.weight.shape == attention.k_norm.weight.shape == (32,)


def test_llama3_rope_scaling_is_active(model_dirs):
    model, _ = _load(model_dirs["llama3"])
    cfg = model.config
    assert cfg.rope_parameters["rope_type"] == "llama3"
    head_dim, theta = cfg.head_dim, cfg.rope_parameters["rope_theta"]
    assert theta == 500000.0
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    scaled = model.model.rotary_emb.inv_freq.float()
    assert not torch.allclose(scaled, plain)
    torch.testing.assert_close(scaled[0], plain[0])  # high frequencies are untouched
    torch.testing.assert_close(scaled[-1], plain[-1] / 8.0)  # low ones divided by factor
    raw = json.loads((model_dirs["llama3"] / "config.json").read_text())
    assert raw["rope_scaling"]["rope_type"] == "llama3" and raw["rope_theta"] == 500000.0


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_tokenizer_round_trip_and_bos(model_dirs, variant):
    from tokenizers import Tokenizer
    tok = AutoTokenizer.from_pretrained(model_dirs[variant])
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [IM_START_ID, IM_END_ID]
    plain = tok(SAMPLE, add_special_tokens=False).input_ids
    assert tok.decode(plain) == SAMPLE
    assert tok(SAMPLE).input_ids == [BOS_ID] + plain
    assert len(plain) < len(SAMPLE.encode())  # merges exist, incl. multi-byte ones
    raw = Tokenizer.from_file(str(model_dirs[variant] / "tokenizer.json"))
    for text in (SAMPLE, "x = 12345; print('ok')\n\n  end", "<|im_start|>user\nhi<|im_end|>"):
        assert raw.encode(text).ids == tok(text).input_ids, text
    gen = json.loads((model_dirs[variant] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [EOS_ID, IM_END_ID] and gen["bos_token_id"] == BOS_ID


def test_chat_template_renders_chatml(model_dirs):
    tok = AutoTokenizer.from_pretrained(model_dirs["llama"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "héllo "},
                                     {"type": "text", "text": "there"}]},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
                    "<|im_start|>user\nhéllo there<|im_end|>\n<|im_start|>assistant\n")
    no_prompt = tok.apply_chat_template(messages[:1], tokenize=False)
    assert no_prompt == "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
    ids = tok.apply_chat_template(messages[:1], tokenize=True, return_dict=True)["input_ids"]
    assert ids[:2] == [BOS_ID, IM_START_ID] and ids.count(BOS_ID) == 1
    assert (model_dirs["llama"] / "chat_template.jinja").read_text() == tiny.chat_template(
        tiny.TOOL_STYLE["llama"])


def test_without_tools_every_style_renders_the_same_chatml(tmp_path):
    """Tool styles differ only where tools, tool calls or tool results are rendered."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}]
    texts = set()
    for style in tiny.TOOL_STYLES:
        path = tiny.write_tiny_model(tmp_path / style, "llama", tool_style=style)
        tok = AutoTokenizer.from_pretrained(path)
        texts.add(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    assert len(texts) == 1


def test_a_cached_demo_model_gets_the_current_chat_template(tmp_path):
    demo = tiny.ensure_demo_model(tmp_path)
    (demo / "chat_template.jinja").write_text(tiny.CHAT_TEMPLATE)  # as an older release wrote it
    config = json.loads((demo / "tokenizer_config.json").read_text())
    config["chat_template"] = tiny.CHAT_TEMPLATE
    (demo / "tokenizer_config.json").write_text(json.dumps(config))
    assert tiny.ensure_demo_model(tmp_path) == demo
    tok = AutoTokenizer.from_pretrained(demo)
    assert "<tools>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object"}}}], tokenize=False)


def test_two_shards_load_identically(tmp_path):
    single = tiny.write_tiny_model(tmp_path / "one", "qwen2", seed=7)
    sharded = tiny.write_tiny_model(tmp_path / "two", "qwen2", seed=7, num_shards=2)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert index["metadata"]["total_size"] == (single / "model.safetensors").stat().st_size - \
        _header_bytes(single / "model.safetensors")
    a, b = _state(_load(single)[0]), _state(_load(sharded)[0])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    other = tiny.write_tiny_model(tmp_path / "other", "qwen2", seed=8)
    assert not np.array_equal(_state(_load(other)[0])["model.norm.weight"], a["model.norm.weight"])


def _header_bytes(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_bfloat16_loads(tmp_path):
    path = tiny.write_tiny_model(tmp_path / "bf16", "llama3", dtype="bfloat16")
    header = (path / "model.safetensors").read_bytes()[8:_header_bytes(path / "model.safetensors")]
    assert '"dtype":"BF16"' in header.decode()
    model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert model.dtype == torch.bfloat16 and not info["missing_keys"]
    reference = tiny.random_weights(json.loads((path / "config.json").read_text()), seed=0)
    got = model.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_allclose(got, reference["model.embed_tokens.weight"], rtol=1e-2, atol=1e-3)


def test_ensure_demo_model_is_idempotent(tmp_path):
    path = tiny.ensure_demo_model(tmp_path)
    assert path == tmp_path / "demo-model"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["tandem_demo"] is True and "Random weights" in (path / "README.md").read_text()
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (256, 4, 8)
    assert (cfg["num_key_value_heads"], cfg["intermediate_size"]) == (4, 688)
    assert cfg["vocab_size"] == 2048 and cfg["max_position_embeddings"] == 4096
    mtime_ns = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny.ensure_demo_model(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-model"]  # no temp dirs left
    model, info = _load(path)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_cli_writes_all_variants(tmp_path):
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make_tiny_model.py"),
                    str(tmp_path), "--variant", "all", "--shards", "2", "--seed", "3"],
                   check=True, capture_output=True)
    model_types = {"llama3": "llama", "gemma3": "gemma3_text"}
    for variant in tiny.ALL_VARIANTS:
        assert (tmp_path / variant / "model.safetensors.index.json").is_file()
        assert json.loads((tmp_path / variant / "config.json").read_text())["model_type"] == (
            model_types.get(variant, variant))
