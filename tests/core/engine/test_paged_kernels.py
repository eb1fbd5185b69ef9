"""The Pallas paged-attention decode path (what GPU/TPU run) against the CPU gather path, with
the kernel in Pallas's interpreter on CPU: same greedy tokens, close logits."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import EngineConfig, resolve_model
from core.engine.request import SamplingParams, SchedulerOutput, SequenceChunk
from core.engine.runner import ModelRunner
from core.models.loader import load_model


def greedy_run(model_dir, monkeypatch, kind: str, steps: int = 6):
    monkeypatch.setenv("TANDEM_PAGED_ATTENTION", kind)
    config, engine_config = resolve_model(model_dir, EngineConfig(max_model_len=128,
                                                                  max_num_seqs=2), backend="cpu")
    model, _ = load_model(model_dir, engine_config.dtype, config)
    runner = ModelRunner(model, config, engine_config)
    assert runner._pages.kind == kind
    prompt = list(np.random.RandomState(1).randint(5, config.vocab_size, size=40))
    greedy = SamplingParams(temperature=0.0)
    page_ids, tokens, logprobs = (9, 3, 12, 5), [], []
    chunk = SequenceChunk("r", tuple(prompt), 0, page_ids[:3], greedy, wants_sample=True)
    for _ in range(steps):
        step = runner.execute(SchedulerOutput((chunk,)))
        tokens.append(int(step.token_ids[0]))
        logprobs.append(float(step.logprobs[0]))
        position = len(prompt) + len(tokens) - 1
        chunk = SequenceChunk("r", (tokens[-1],), position, page_ids[:position // 16 + 1],
                              greedy, wants_sample=True)
    return tokens, np.array(logprobs)


@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_pallas_decode_matches_gather(tiny_models, monkeypatch, variant):
    pytest.importorskip("jax.experimental.pallas.ops.gpu.paged_attention")
    gather_tokens, gather_logprobs = greedy_run(tiny_models[variant], monkeypatch, "gather")
    pallas_tokens, pallas_logprobs = greedy_run(tiny_models[variant], monkeypatch,
                                                "pallas-interpret")
    assert pallas_tokens == gather_tokens
    np.testing.assert_allclose(pallas_logprobs, gather_logprobs, atol=1e-4)
