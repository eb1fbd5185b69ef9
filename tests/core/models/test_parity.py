"""The JAX model against Hugging Face transformers (PyTorch) on the same tiny checkpoints."""

from __future__ import annotations

import queue

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from core.cache.kv_pool import KVPages  # noqa: E402
from core.config import EngineConfig, resolve_model  # noqa: E402
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


def runner_greedy(model_dir, dtype: str, num_tokens: int) -> tuple[list[int], list[int]]:
    """(prompt, greedy tokens) of the jitted runner, its engine configuration resolved as the
    core resolves it, on a random 40-token prompt spread over pages in any order."""
    config, engine_config = resolve_model(
        model_dir, EngineConfig(max_model_len=128, max_num_seqs=2, dtype=dtype), backend="cpu")
    model, _ = load_model(model_dir, dtype, config)
    runner = ModelRunner(model, config, engine_config)
    prompt = [int(t) for t in np.random.RandomState(1).randint(5, config.vocab_size, size=40)]
    greedy = SamplingParams(temperature=0.0)
    tokens, page_ids = [], (9, 3, 12, 5, 0, 7, 1, 2)  # any pages, in any order
    chunk = SequenceChunk("r", tuple(prompt), 0, page_ids[:3], greedy, wants_sample=True)
    for _ in range(num_tokens):
        tokens.append(int(runner.execute(SchedulerOutput((chunk,))).token_ids[0]))
        position = len(prompt) + len(tokens) - 1
        chunk = SequenceChunk("r", (tokens[-1],), position, page_ids[:position // 16 + 1],
                              greedy, wants_sample=True)
    return prompt, tokens


def hf_logits(model_dir, ids: np.ndarray) -> np.ndarray:
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("variant", ["llama", "llama3", "mistral", "qwen2", "qwen3"])
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


@pytest.mark.parametrize("variant", ["llama", "llama3", "mistral", "qwen2", "qwen3"])
def test_greedy_tokens_match_transformers_generate(tiny_models, variant):
    prompt, tokens = runner_greedy(tiny_models[variant], "float32", 24)
    hf = AutoModelForCausalLM.from_pretrained(tiny_models[variant], dtype=torch.float32).eval()
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert tokens == expected
    if variant == "qwen3":  # its weights make greedy follow the context (core/models/tiny.py)
        assert len(set(tokens)) > 12


def test_bfloat16_engine_generates(tiny_models, tmp_path):
    """The whole jitted step (cache writes, attention, sampler) runs in bfloat16."""
    from core.engine.request import Request, StoppingParams
    from core.engine.startup import create_engine

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


@pytest.mark.parametrize("variant", ["llama", "qwen2", "qwen3"])
def test_bfloat16_greedy_tokens_match_transformers_bfloat16(tiny_models, variant):
    """bf16 weights and KV pool (f32 accumulation, f32 attention math) against HF `generate` in
    bfloat16: the same greedy tokens on the parity prompt; logits within 5% of their range."""
    prompt, tokens = runner_greedy(tiny_models[variant], "bfloat16", 16)
    hf = AutoModelForCausalLM.from_pretrained(tiny_models[variant], dtype=torch.bfloat16).eval()
    expected = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert tokens == expected
    ids, ours = jax_logits(tiny_models[variant], "bfloat16")
    with torch.no_grad():
        reference = hf(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()
    assert np.abs(ours - reference).max() <= 0.05 * np.abs(reference).max()


def test_qwen3_through_the_engine_matches_transformers_generate(tiny_models):
    """Qwen3 through the whole engine (scheduler, chunked prefill, a decode batch of two, the
    sampler) on prompts its chat template renders, thinking on and off: greedy tokens equal HF
    `generate`, and nothing compiles after warm-up."""

    from core.engine.startup import create_engine
    from core.tokenizer import ChatPrompt

    model_dir = tiny_models["qwen3"]
    engine = create_engine(model_dir, EngineConfig(max_model_len=128, max_num_seqs=2,
                                                   max_num_batched_tokens=32))
    try:
        messages = [{"role": "system", "content": "Answer briefly, then stop."},
                    {"role": "user", "content": "Tell me a story about the sea, the mountains "
                                                "and the city at night."}]
        prompts = [engine.tokenizer.apply_chat_template(ChatPrompt(
            messages=messages, template_kwargs={"enable_thinking": thinking}))
            for thinking in (True, False)]
        assert len(prompts[0]) > 32 and prompts[1][:len(prompts[0])] == prompts[0]
        tokens = engine_greedy_tokens(engine, prompts, max_tokens=16)
        assert engine.runner.compilations_after_warmup == 0
    finally:
        engine.stop()
    assert tokens == hf_greedy_tokens(model_dir, prompts, max_tokens=16)


def engine_greedy_tokens(engine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Each prompt's greedy completion (EOS ignored) from a running engine, all in flight at
    once (chunked prefill and batched decode)."""
    from core.engine.request import Request, StoppingParams

    outputs: queue.Queue = queue.Queue()
    for index, prompt in enumerate(prompts):
        engine.add_request(Request(f"greedy-{index}", prompt, SamplingParams(temperature=0.0),
                                   StoppingParams(max_tokens=max_tokens, ignore_eos=True)),
                           outputs.put)
    tokens: dict[str, list[int]] = {f"greedy-{index}": [] for index in range(len(prompts))}
    finished = 0
    while finished < len(prompts):
        output = outputs.get(timeout=120)
        assert output.error is None, output.error
        tokens[output.request_id] += output.new_token_ids
        finished += output.finish_reason is not None
    return [tokens[f"greedy-{index}"] for index in range(len(prompts))]


def hf_greedy_tokens(model_dir, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Each prompt's greedy completion from Hugging Face `generate` in float32 (EOS ignored)."""
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    completions = []
    for prompt in prompts:
        # the mask given: HF would infer one that hides BOS (id 0, the pad id passed)
        mask = torch.ones(1, len(prompt), dtype=torch.long)
        completions.append(hf.generate(
            torch.tensor([prompt]), attention_mask=mask, max_new_tokens=max_tokens,
            do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist())
    return completions
