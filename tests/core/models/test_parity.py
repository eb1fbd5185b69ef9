"""The JAX model against Hugging Face transformers (PyTorch) on the same tiny checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from core.cache.kv_pool import KVPages  # noqa: E402
from core.config import EngineConfig  # noqa: E402
from core.engine.request import SamplingParams, SchedulerOutput, SequenceChunk  # noqa: E402
from core.engine.runner import ModelRunner  # noqa: E402
from core.models.loader import load_model  # noqa: E402
from core.models.tiny import write_tiny_model  # noqa: E402

SEQ_LEN = 80  # longer than Mistral's sliding window (32) and llama3's original context (64)


def jax_logits(model_dir, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    model, config = load_model(model_dir, dtype)
    ids = np.random.RandomState(0).randint(5, config.vocab_size, size=(2, SEQ_LEN)).astype(np.int32)
    pages_per_row, page_size = -(-SEQ_LEN // 16), 16
    pages = KVPages.create(config, 2 * pages_per_row, page_size,
                           model.embed_tokens.get_value().dtype)
    page_table = np.arange(2 * pages_per_row, dtype=np.int32).reshape(2, pages_per_row)[:, ::-1]
    positions = np.tile(np.arange(SEQ_LEN, dtype=np.int32), (2, 1))
    hidden, _ = model(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(page_table), pages)
    return ids, np.asarray(model.logits(hidden))


def hf_logits(model_dir, ids: np.ndarray) -> np.ndarray:
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("variant", ["llama", "llama3", "mistral", "qwen2"])
def test_logits_match_transformers(tiny_models, variant):
    ids, ours = jax_logits(tiny_models[variant])
    reference = hf_logits(tiny_models[variant], ids)
    assert np.abs(reference).max() > 1.0  # the comparison is not between near-zero numbers
    assert np.abs(ours - reference).max() <= 1e-4


def test_sharded_checkpoint_loads_the_same(tiny_models, tmp_path):
    sharded = write_tiny_model(tmp_path / "sharded", "llama", seed=0, num_shards=3)
    assert (sharded / "model.safetensors.index.json").exists()
    _, single = jax_logits(tiny_models["llama"])
    _, from_shards = jax_logits(sharded)
    np.testing.assert_array_equal(single, from_shards)


def test_bfloat16_close_to_float32(tiny_models, tmp_path):
    bf16_dir = write_tiny_model(tmp_path / "bf16", "qwen2", seed=0, dtype="bfloat16")
    model, config = load_model(bf16_dir)
    assert config.dtype == "bfloat16" and model.embed_tokens.get_value().dtype == jnp.bfloat16
    _, ours = jax_logits(bf16_dir)
    _, as_float32 = jax_logits(bf16_dir, "float32")
    assert np.abs(ours - as_float32).max() < 0.1 * np.abs(as_float32).max()


@pytest.mark.parametrize("variant", ["llama", "llama3", "mistral", "qwen2"])
def test_greedy_tokens_match_transformers_generate(tiny_models, variant):
    model, config = load_model(tiny_models[variant])
    runner = ModelRunner(model, config, EngineConfig(max_model_len=128, max_num_seqs=2))
    prompt = list(np.random.RandomState(1).randint(5, config.vocab_size, size=40))
    greedy = SamplingParams(temperature=0.0)
    tokens, page_ids = [], (9, 3, 12, 5, 0, 7, 1, 2)  # any pages, in any order
    chunk = SequenceChunk("r", tuple(prompt), 0, page_ids[:3], greedy, wants_sample=True)
    for _ in range(24):
        tokens.append(int(runner.execute(SchedulerOutput((chunk,))).token_ids[0]))
        position = len(prompt) + len(tokens) - 1
        chunk = SequenceChunk("r", (tokens[-1],), position, page_ids[:position // 16 + 1],
                              greedy, wants_sample=True)
    hf = AutoModelForCausalLM.from_pretrained(tiny_models[variant], dtype=torch.float32).eval()
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert tokens == expected


def test_bfloat16_engine_generates(tiny_models, tmp_path):
    """The whole jitted step (cache writes, attention, sampler) runs in bfloat16."""
    from core.engine.loop import create_engine
    from core.engine.request import Request, StoppingParams

    engine = create_engine(tiny_models["qwen2"], EngineConfig(max_model_len=64, max_num_seqs=2,
                                                              dtype="bfloat16"))
    try:
        assert engine.runner.compilations_after_warmup == 0
        import queue

        outputs: queue.Queue = queue.Queue()
        engine.add_request(Request("bf16", [0, 5, 6, 7], SamplingParams(temperature=0.0),
                                   StoppingParams(max_tokens=8, ignore_eos=True)), outputs.put)
        tokens = []
        while True:
            output = outputs.get(timeout=60)
            tokens += output.new_token_ids
            if output.finish_reason is not None:
                break
        assert len(tokens) == 8 and output.error is None
    finally:
        engine.stop()


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_bfloat16_greedy_tokens_match_transformers_bfloat16(tiny_models, variant):
    """bf16 weights and KV pool (f32 accumulation, f32 attention math) against HF `generate` in
    bfloat16: the same greedy tokens on the parity prompt; logits within 5% of their range."""
    model, config = load_model(tiny_models[variant], "bfloat16")
    runner = ModelRunner(model, config, EngineConfig(max_model_len=128, max_num_seqs=2,
                                                     dtype="bfloat16"))
    prompt = list(np.random.RandomState(1).randint(5, config.vocab_size, size=40))
    greedy = SamplingParams(temperature=0.0)
    tokens, page_ids = [], (9, 3, 12, 5, 0, 7, 1, 2)
    chunk = SequenceChunk("r", tuple(prompt), 0, page_ids[:3], greedy, wants_sample=True)
    for _ in range(16):
        tokens.append(int(runner.execute(SchedulerOutput((chunk,))).token_ids[0]))
        position = len(prompt) + len(tokens) - 1
        chunk = SequenceChunk("r", (tokens[-1],), position, page_ids[:position // 16 + 1],
                              greedy, wants_sample=True)
    hf = AutoModelForCausalLM.from_pretrained(tiny_models[variant], dtype=torch.bfloat16).eval()
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert tokens == expected
    ids, ours = jax_logits(tiny_models[variant], "bfloat16")
    with torch.no_grad():
        reference = hf(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
    assert np.abs(ours - reference).max() <= 0.05 * np.abs(reference).max()
