"""The mixture-of-experts families (Qwen3-MoE, Mixtral) against Hugging Face transformers on
their tiny checkpoints: the config keys each family's checkpoints carry, the experts the loader
stacks, logits within 1e-4 in float32, greedy tokens of the whole engine equal to HF `generate`
on prompts of the family's chat template with nothing compiled after warm-up, and the two
dispatches of core/models/moe.py agreeing. (--tensor-parallel 4: test_tensor_parallel.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from core.config import EngineConfig
from core.model_config import MOE_ARCHITECTURES, SUPPORTED_ARCHITECTURES, ModelConfig
from core.models.chat_templates import chat_template

torch = pytest.importorskip("torch")
from transformers import AutoTokenizer  # noqa: E402

from tests.core.models.test_parity import (  # noqa: E402
    engine_greedy_tokens,
    hf_greedy_tokens,
    hf_logits,
    jax_logits,
)

FAMILIES = ("qwen3_moe", "mixtral")


def test_config_reads_each_familys_expert_keys(tiny_models):
    qwen = json.loads((tiny_models["qwen3_moe"] / "config.json").read_text())
    mixtral = json.loads((tiny_models["mixtral"] / "config.json").read_text())
    assert set(MOE_ARCHITECTURES) <= set(SUPPORTED_ARCHITECTURES)
    config = ModelConfig.from_hf_dict(qwen)
    assert config.qk_norm and config.head_dim == 32 and not config.tie_word_embeddings
    assert config.moe.num_experts == qwen["num_experts"] == 8
    assert config.moe.num_experts_per_tok == 2 and config.moe.normalize_top_k
    assert config.moe.expert_intermediate_size == qwen["moe_intermediate_size"] == 32
    assert config.moe.sparse_layers == (0, 1) and config.sliding_window is None
    # transformers 5's save_pretrained writes `num_local_experts` for Qwen3-MoE; its defaults
    # (norm_topk_prob false), dense layers by `mlp_only_layers` and `decoder_sparse_step`
    saved = {key: value for key, value in qwen.items() if key not in (
        "num_experts", "norm_topk_prob")}
    moe = ModelConfig.from_hf_dict({**saved, "num_local_experts": 4, "num_hidden_layers": 6,
                                    "mlp_only_layers": [3], "decoder_sparse_step": 2}).moe
    assert moe.num_experts == 4 and not moe.normalize_top_k and moe.sparse_layers == (1, 5)
    config = ModelConfig.from_hf_dict(mixtral)
    assert not config.qk_norm and config.sliding_window is None
    assert config.moe.num_experts == mixtral["num_local_experts"] == 8
    assert config.moe.expert_intermediate_size == mixtral["intermediate_size"]
    assert config.moe.normalize_top_k and config.moe.sparse_layers == (0, 1)
    assert ModelConfig.from_hf_dict({**mixtral, "sliding_window": 16}).sliding_window == 16
    assert ModelConfig.from_hf_dir(tiny_models["qwen3"]).moe is None


@pytest.mark.parametrize("family", FAMILIES)
def test_the_loader_stacks_each_experts_tensors(tiny_models, family):
    from core.models.loader import load_model

    model, config = load_model(tiny_models[family])
    written = load_file(tiny_models[family] / "model.safetensors")
    block = "block_sparse_moe" if family == "mixtral" else "mlp"
    names = {"gate": "w1", "up": "w3", "down": "w2"} if family == "mixtral" else {
        name: f"{name}_proj" for name in ("gate", "up", "down")}
    for index, layer in enumerate(model.layers):
        prefix = f"model.layers.{index}.{block}."
        np.testing.assert_array_equal(np.asarray(layer.mlp.router.get_value()),
                                      written[prefix + "gate.weight"].T)
        for ours, theirs in names.items():  # gate/up [d, e, f], down [e, f, d]
            stack = np.asarray(getattr(layer.mlp, f"expert_{ours}").get_value())
            stack = stack if ours == "down" else stack.transpose(1, 0, 2)
            assert stack.shape[0] == config.moe.num_experts
            for expert in (0, config.moe.num_experts - 1):
                np.testing.assert_array_equal(
                    stack[expert], written[f"{prefix}experts.{expert}.{theirs}.weight"].T)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_models, family):
    ids, ours = jax_logits(tiny_models[family])
    reference = hf_logits(tiny_models[family], ids)
    assert np.abs(reference).max() > 1.0
    assert np.abs(ours - reference).max() <= 1e-4


def test_qwen3_moe_without_renormalized_top_k_matches_transformers(tiny_models, tmp_path):
    """norm_topk_prob false (transformers' default): the top-k probabilities as they are."""
    model_dir = shutil.copytree(tiny_models["qwen3_moe"], tmp_path / "unnormalized")
    raw = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**raw, "norm_topk_prob": False}))
    ids, ours = jax_logits(model_dir)
    reference = hf_logits(model_dir, ids)
    assert np.abs(ours - reference).max() <= 1e-4
    _, normalized = jax_logits(tiny_models["qwen3_moe"])
    assert np.abs(ours - normalized).max() > 0.1  # the switch matters


def test_qwen3_moe_dense_layers_match_transformers(tiny_models, tmp_path):
    """`mlp_only_layers`: layer 1 a dense MLP `intermediate_size` wide, layer 0 the experts."""
    from core.models.tiny import random_weights, write_weights

    model_dir = shutil.copytree(tiny_models["qwen3_moe"], tmp_path / "mixed")
    raw = {**json.loads((model_dir / "config.json").read_text()), "mlp_only_layers": [1]}
    (model_dir / "config.json").write_text(json.dumps(raw))
    weights = random_weights(raw, seed=1)
    assert "model.layers.1.mlp.gate_proj.weight" in weights
    assert "model.layers.0.mlp.experts.7.down_proj.weight" in weights
    write_weights(model_dir, weights)
    assert ModelConfig.from_hf_dir(model_dir).moe.sparse_layers == (0,)
    ids, ours = jax_logits(model_dir)
    assert np.abs(ours - hf_logits(model_dir, ids)).max() <= 1e-4


def test_the_sorted_dispatch_gives_the_dense_sums():
    import jax

    from core.models.moe import dense_experts, route, sorted_experts

    rng = np.random.default_rng(0)
    x, router = rng.standard_normal((12, 16), np.float32), rng.standard_normal((16, 8), np.float32)
    gate, up = (0.3 * rng.standard_normal((16, 8, 24), np.float32) for _ in range(2))
    down = 0.3 * rng.standard_normal((8, 24, 16), np.float32)

    @jax.jit
    def both(x, router, gate, up, down):
        weights, experts = route(x, router, 3, normalize=True)
        return (weights, experts, dense_experts(x, weights, experts, gate, up, down),
                sorted_experts(x, weights, experts, gate, up, down))

    weights, experts, dense, grouped = map(np.asarray, both(x, router, gate, up, down))
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(grouped, dense, atol=1e-5)
    probs = np.exp(x @ router) / np.exp(x @ router).sum(axis=-1, keepdims=True)
    for token in range(len(x)):  # by hand: the top 3 experts, renormalized, each a SwiGLU
        top = np.argsort(-probs[token])[:3]
        assert sorted(experts[token]) == sorted(top)
        silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
        expected = sum(probs[token, e] / probs[token, top].sum()
                       * (silu(x[token] @ gate[:, e]) * (x[token] @ up[:, e])) @ down[e]
                       for e in top)
        np.testing.assert_allclose(dense[token], expected, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_engine_matches_transformers_generate_on_chat_prompts(tiny_models, family):
    """The whole engine (scheduler, chunked prefill, a decode batch of two, the sampler) on
    two conversations the family's chat template renders: greedy tokens equal HF `generate`,
    and nothing compiles after warm-up."""
    from core.engine.startup import create_engine
    from core.tokenizer import ChatPrompt

    model_dir = tiny_models[family]
    style = "qwen3" if family == "qwen3_moe" else "mistral"
    assert AutoTokenizer.from_pretrained(model_dir).chat_template == chat_template(style)
    engine = create_engine(model_dir, EngineConfig(max_model_len=64, max_num_seqs=2,
                                                   max_num_batched_tokens=32))
    try:
        conversations = [[{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Tell me a story about the sea."}],
                         [{"role": "user", "content": "A story?"},
                          {"role": "assistant", "content": "Once upon a time"},
                          {"role": "user", "content": "Go on."}]]
        prompts = [engine.tokenizer.apply_chat_template(ChatPrompt(messages=messages))
                   for messages in conversations]
        assert all(32 < len(prompt) <= 64 - 16 for prompt in prompts)  # two prefill chunks
        tokens = engine_greedy_tokens(engine, prompts, max_tokens=16)
        assert engine.runner.compilations_after_warmup == 0
    finally:
        engine.stop()
    for got, expected in zip(tokens, hf_greedy_tokens(model_dir, prompts, max_tokens=16),
                             strict=True):
        assert got == expected
        assert len(set(expected)) > 8  # the routing follows the context, not one token
