"""The per-row logits stages and prompt logprobs on the real tiny model, against Hugging Face
transformers (PyTorch) on the same checkpoint: greedy tokens with penalties, logit_bias,
allowed_token_ids, bad words and min_tokens equal a numpy reference over HF's logits; prompt
logprobs equal HF's log-softmax within 1e-4, cold and with the prefix cache warm; n > 1
prefills the shared prompt once; seeded rows stay batch-invariant; nothing compiles after
warm-up."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from core.config import EngineConfig
from core.engine.request import Request, SamplingParams, StoppingParams
from tests.core.engine.test_engine import run, tokens, wait_for_idle

torch = pytest.importorskip("torch")

GREEDY = SamplingParams(temperature=0.0, seed=1)
PROMPT = [5, 77, 301, 42, 42, 9, 130, 77, 200, 11, 12, 301, 64, 64, 90, 17, 33]


@pytest.fixture(scope="module")
def engine(tiny_models):
    from core.engine.startup import create_engine

    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=256, max_num_seqs=8, max_num_batched_tokens=128))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def hf_model(tiny_models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"],
                                                dtype=torch.float32).eval()


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """float64 [len(ids), v] logits of every position."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def reference_greedy(model, prompt: list[int], num_tokens: int, params: SamplingParams,
                     min_tokens: int = 0, eos_ids: tuple[int, ...] = ()) -> list[int]:
    """numpy over HF's logits, in the pipeline's order (vLLM's semantics)."""
    output: list[int] = []
    vocab_size = model.config.vocab_size
    for _ in range(num_tokens):
        x = hf_logits(model, prompt + output)[-1]
        for token_id, bias in params.logit_bias:
            x[token_id] += bias
        if params.allowed_token_ids is not None:
            keep = np.zeros(vocab_size, bool)
            keep[list(params.allowed_token_ids)] = True
            x[~keep] = -np.inf
        for word in params.bad_words_token_ids:
            if len(word) == 1 or (len(output) >= len(word) - 1
                                  and tuple(output[len(output) - len(word) + 1:]) == word[:-1]):
                x[word[-1]] = -np.inf
        counts = np.bincount(output, minlength=vocab_size)
        seen = (counts > 0) | np.isin(np.arange(vocab_size), prompt)
        rep = params.repetition_penalty
        x = np.where(seen, np.where(x > 0, x / rep, x * rep), x)
        x = x - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
        if len(output) < min_tokens:
            x[list(eos_ids)] = -np.inf
        output.append(int(np.argmax(x)))
    return output


def generate(engine, params: SamplingParams, max_tokens: int = 12, prompt=PROMPT,
             **stopping) -> list[int]:
    request = Request("r", list(prompt), params,
                      StoppingParams(max_tokens=max_tokens, **{"ignore_eos": True, **stopping}))
    return tokens(run(engine, [request])["r"])


@pytest.mark.parametrize("params", [
    replace(GREEDY, repetition_penalty=1.8),
    replace(GREEDY, repetition_penalty=0.6),
    replace(GREEDY, presence_penalty=1.5),
    replace(GREEDY, frequency_penalty=0.7),
    replace(GREEDY, frequency_penalty=-0.5, presence_penalty=0.4, repetition_penalty=1.3),
    replace(GREEDY, logit_bias=((7, 3.5), (300, -2.0), (450, 4.0))),
    replace(GREEDY, allowed_token_ids=(3, 40, 41, 42, 100, 301, 499)),
    replace(GREEDY, bad_words_token_ids=((42,), (380, 33), (33, 87, 380))),
], ids=["rep-up", "rep-down", "presence", "frequency", "all-penalties", "logit-bias",
        "allowed", "bad-words"])
def test_greedy_tokens_match_a_numpy_reference_over_hf_logits(engine, hf_model, params):
    expected = reference_greedy(hf_model, PROMPT, 12, params)
    assert expected != reference_greedy(hf_model, PROMPT, 12, GREEDY)  # the stage matters
    assert generate(engine, params) == expected


def test_penalties_change_the_tokens_and_neutral_rows_are_unaffected(engine, hf_model):
    plain = generate(engine, GREEDY)
    assert plain == reference_greedy(hf_model, PROMPT, 12, GREEDY)
    penalized = replace(GREEDY, frequency_penalty=2.0, repetition_penalty=2.0, seed=2)
    requests = [Request(f"r{i}", list(PROMPT), GREEDY if i % 2 else penalized,
                        StoppingParams(max_tokens=12, ignore_eos=True)) for i in range(6)]
    outputs = run(engine, requests)
    assert tokens(outputs["r1"]) == plain  # a neutral row amid penalized ones
    assert tokens(outputs["r0"]) == reference_greedy(hf_model, PROMPT, 12, penalized)
    assert tokens(outputs["r0"]) != plain


def test_logit_bias_plus_100_forces_and_minus_100_bans(engine):
    forced = generate(engine, replace(GREEDY, logit_bias=((123, 100.0),)))
    assert forced == [123] * 12
    plain = generate(engine, GREEDY)
    banned_id = plain[0]
    banned = generate(engine, replace(GREEDY, logit_bias=((banned_id, -100.0),)))
    assert banned_id not in banned


def test_min_tokens_holds_off_eos_and_stop_ids(engine, hf_model):
    eos_ids = engine.model_config.eos_token_ids
    # EOS forced by logit_bias: without min_tokens the choice ends at once
    params = replace(GREEDY, logit_bias=((eos_ids[0], 50.0),))
    assert generate(engine, params, ignore_eos=False) == [eos_ids[0]]
    held = generate(engine, params, ignore_eos=False, min_tokens=5)
    assert len(held) == 6 and held[-1] == eos_ids[0] and eos_ids[0] not in held[:5]
    assert held[:5] == reference_greedy(hf_model, PROMPT, 5, params, min_tokens=5,
                                        eos_ids=eos_ids)
    plain = generate(engine, GREEDY, max_tokens=4)
    stop_id = plain[1]
    assert generate(engine, GREEDY, stop_token_ids=(stop_id,)) == plain[:2]
    held = generate(engine, GREEDY, stop_token_ids=(stop_id,), min_tokens=3)
    assert len(held) >= 3 and stop_id not in held[:3]


def test_min_tokens_defers_stop_strings(engine):
    text_of = engine.tokenizer.decode
    plain = generate(engine, GREEDY, max_tokens=8)
    stop = text_of(plain[:1]).strip() or text_of(plain[:2]).strip()
    request = Request("s", list(PROMPT), GREEDY, StoppingParams(
        max_tokens=8, ignore_eos=True, stop_strings=(stop,), min_tokens=6))
    outputs = run(engine, [request])["s"]
    assert len(tokens(outputs)) >= 6


def test_prompt_logprobs_match_hf_cold_and_with_the_cache_warm(engine, hf_model):
    prompt = (PROMPT * 5)[:70]  # > 4 pages of 16: the prefix cache holds whole pages
    expected = hf_logits(hf_model, prompt)
    expected = expected - np.log(np.exp(expected - expected.max(-1, keepdims=True)).sum(
        -1, keepdims=True)) - expected.max(-1, keepdims=True)
    for attempt in ("cold", "warm"):
        request = Request(f"p-{attempt}", list(prompt), GREEDY,
                          StoppingParams(max_tokens=2, ignore_eos=True), prompt_logprobs=3)
        outputs = run(engine, [request])[request.request_id]
        entries = outputs[0].prompt_logprobs
        assert [e.token_id for e in entries] == prompt
        got = np.array([e.logprob for e in entries[1:]])
        want = expected[np.arange(len(prompt) - 1), prompt[1:]]
        np.testing.assert_allclose(got, want, atol=1e-4)
        top = entries[5].top
        assert len(top) == 3
        assert top[0][0] == int(np.argmax(expected[4]))
        assert abs(top[0][1] - expected[4].max()) < 1e-4
        assert outputs[-1].cached_tokens == 0  # the scored prompt was computed, not cached


def test_max_tokens_zero_scores_the_prompt_only(engine, hf_model):
    request = Request("z", list(PROMPT), GREEDY, StoppingParams(max_tokens=0),
                      prompt_logprobs=0)
    outputs = run(engine, [request])["z"]
    assert tokens(outputs) == [] and outputs[-1].finish_reason is not None
    assert len(outputs[-1].prompt_logprobs) == len(PROMPT)


def test_n_choices_prefill_the_shared_prompt_once(engine):
    prompt = (PROMPT * 6)[:100]
    computed = []
    original = engine.runner.dispatch

    def counting(batch):
        computed.append(sum(len(c.token_ids) for c in batch.chunks if len(c.token_ids) > 1))
        return original(batch)

    engine.runner.dispatch = counting
    try:
        sampling = replace(GREEDY, temperature=1.0, seed=5)
        requests = [Request(f"n-{i}", list(prompt), replace(sampling, choice_index=i),
                            StoppingParams(max_tokens=3, ignore_eos=True), cache_salt="n",
                            group_id="n")
                    for i in range(4)]
        outputs = run(engine, requests)
    finally:
        engine.runner.dispatch = original
    page_size = engine.engine_config.page_size
    tail = len(prompt) - (len(prompt) - 1) // page_size * page_size
    assert sum(computed) == len(prompt) + 3 * tail  # siblings compute only the last page
    assert all(outputs[f"n-{i}"][-1].cached_tokens == len(prompt) - tail for i in (1, 2, 3))


def test_seeded_penalized_rows_equal_alone_and_amid_16(engine):
    sampling = SamplingParams(temperature=0.9, top_p=0.9, seed=11, presence_penalty=0.5,
                              frequency_penalty=0.3, repetition_penalty=1.2,
                              logit_bias=((9, 2.0),), bad_words_token_ids=((77, 200),))
    alone = generate(engine, sampling, max_tokens=10)
    rng = np.random.default_rng(3)
    others = [Request(f"o{i}", rng.integers(5, 500, size=int(rng.integers(3, 60))).tolist(),
                      SamplingParams(temperature=1.0, seed=100 + i,
                                     frequency_penalty=float(i % 3) * 0.5),
                      StoppingParams(max_tokens=int(rng.integers(4, 20)), ignore_eos=True))
              for i in range(16)]
    target = Request("t", list(PROMPT), sampling, StoppingParams(max_tokens=10, ignore_eos=True))
    outputs = run(engine, [*others[:8], target, *others[8:]])
    assert tokens(outputs["t"]) == alone
    wait_for_idle(engine)
    assert engine.compilations_after_warmup == 0
