"""N-gram speculation: prompt-lookup proposals, exact rejection sampling (the sampled
distribution is unchanged: a fixed-seed statistical check), and on a real tiny model greedy
tokens and logprobs identical with and without speculation, drafts rejected (their KV
rewritten), usage counts, and no compilation after warm-up."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from core.config import EngineConfig
from core.engine import speculative
from core.engine.request import Request, SamplingParams, StoppingParams
from core.engine.sampling import SamplingArrays, verify_sample
from tests.core.engine.test_engine import run, tokens

LOGITS = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], np.float32))


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    sequence = [1, 2, 3, 4, 5, 9, 9, 2, 3, 4, 6, 7, 8, 2, 3, 4]
    assert speculative.propose(sequence, 3) == (6, 7, 8)  # the latest [2, 3, 4], not the first
    assert speculative.propose(sequence, 1) == (6,)
    assert speculative.propose([1, 2, 3, 4, 5], 4) == ()  # no earlier occurrence
    assert speculative.propose([5, 6, 1, 5, 6], 4) == (1, 5, 6)  # a 2-gram when no 3-gram


def test_speculation_switches_off_when_acceptance_stays_low():
    request = Request("r", [1], SamplingParams(), StoppingParams(max_tokens=8))
    request.num_draft_tokens, request.num_accepted_draft_tokens = 40, 4
    assert not speculative.keep_speculating(request)
    request.num_accepted_draft_tokens = 20
    assert speculative.keep_speculating(request)


@pytest.mark.parametrize("params, expected", [
    (SamplingParams(temperature=1.0), np.exp(LOGITS)),
    (SamplingParams(temperature=1.0, top_k=3),
     np.r_[np.exp(LOGITS[:3]) / np.exp(LOGITS[:3]).sum(), np.zeros(3)]),
], ids=["plain", "top_k"])
@pytest.mark.parametrize("draft", [0, 2, 4, -1], ids=["likely", "medium", "cut-or-rare", "none"])
def test_rejection_sampling_leaves_the_distribution_unchanged(params, expected, draft):
    """Each row accepts its draft x with probability p(x), else draws from p without x: the
    emitted token follows p exactly. 20,000 rows with fixed seeds: deterministic, and the
    tolerance (0.015, over 4 standard deviations of a frequency) could only fail on a bug."""
    num_rows = 20_000
    rows = [SamplingParams(temperature=params.temperature, top_k=params.top_k, seed=seed)
            for seed in range(num_rows)]
    result = jax.jit(verify_sample)(
        np.tile(LOGITS, (num_rows, 1)), SamplingArrays.from_params(rows, num_rows),
        np.arange(num_rows, dtype=np.int32) % 997, np.full(num_rows, draft, np.int32), False)
    accepted = np.asarray(result.accepted)
    emitted = np.where(accepted, draft, np.asarray(result.token_ids))
    frequencies = np.bincount(emitted, minlength=len(LOGITS)) / num_rows
    np.testing.assert_allclose(frequencies, expected, atol=0.015)
    if draft >= 0:
        assert abs(accepted.mean() - expected[draft]) < 0.015  # accepted with p(x)
        assert not np.any(np.asarray(result.token_ids)[~accepted] == draft)  # x removed
    else:
        assert not accepted.any()


def test_greedy_verification_accepts_exactly_the_argmax():
    rows = [SamplingParams(temperature=0.0, seed=1)] * 3
    result = jax.jit(verify_sample)(np.tile(LOGITS, (3, 1)), SamplingArrays.from_params(rows, 3),
                                    np.zeros(3, np.int32), np.array([0, 1, -1], np.int32), True)
    assert np.asarray(result.accepted).tolist() == [True, False, False]
    assert np.asarray(result.token_ids).tolist() == [0, 0, 0]
    np.testing.assert_allclose(np.asarray(result.logprobs), LOGITS[[0, 0, 0]], atol=1e-5)


@pytest.fixture(scope="module")
def engine(tiny_models):
    """test_engine's `small_pool_engine` (its buckets come from XLA's persistent cache when
    that ran first) with up to 4 drafts: only the verify calls compile anew."""
    from core.engine.startup import create_engine

    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=256, max_num_seqs=8, num_pages=20, max_num_batched_tokens=64,
        speculative_ngram=4))
    yield engine
    engine.stop()


GREEDY = SamplingParams(temperature=0.0, seed=1)


@pytest.fixture(scope="module")
def copy_prompt(engine) -> list[int]:
    """A prefix, the model's own greedy continuation of it, and the prefix again."""
    prefix = list(range(20, 60))
    continuation = tokens(run(engine, [Request("seed", prefix, GREEDY, StoppingParams(
        max_tokens=48, ignore_eos=True))])["seed"])
    return prefix + continuation + prefix


def test_greedy_tokens_and_logprobs_are_those_of_plain_decoding(engine, copy_prompt,
                                                                monkeypatch):
    """A copy-heavy prompt (a prefix, the model's own continuation, the prefix again) and a
    fresh one, batched together: the same tokens and logprobs with and without speculation;
    drafts were both accepted and rejected (the rejected ones' KV is rewritten later)."""
    prompts = {"copy": copy_prompt, "fresh": list(range(100, 140))}

    def decode(tag: str):
        return run(engine, [Request(f"{tag}-{name}", prompt, GREEDY, StoppingParams(
            max_tokens=48, ignore_eos=True), want_logprobs=True, top_logprobs=2)
            for name, prompt in prompts.items()])

    drafted_before = engine.num_draft_tokens
    speculated = decode("spec")
    num_drafts = engine.num_draft_tokens - drafted_before
    monkeypatch.setattr(engine.scheduler, "max_drafts", 0)
    plain = decode("plain")
    assert engine.num_draft_tokens - drafted_before == num_drafts  # (off: nothing drafted)
    copy = speculated["spec-copy"]
    assert copy[-1].num_accepted_draft_tokens > 0
    last = [speculated[f"spec-{name}"][-1] for name in prompts]  # some drafts were rejected:
    assert sum(o.num_accepted_draft_tokens for o in last) < sum(o.num_draft_tokens for o in last)
    assert len(copy) < 48  # several tokens per step
    for name in prompts:
        spec, base = speculated[f"spec-{name}"], plain[f"plain-{name}"]
        assert tokens(spec) == tokens(base)
        assert spec[-1].completion_tokens == 48 == len(tokens(spec))
        spec_logprobs = [entry for output in spec for entry in output.logprobs]
        base_logprobs = [entry for output in base for entry in output.logprobs]
        np.testing.assert_allclose([entry.logprob for entry in spec_logprobs],
                                   [entry.logprob for entry in base_logprobs], atol=1e-4)
        assert [entry.top[0][0] for entry in spec_logprobs] == [
            entry.top[0][0] for entry in base_logprobs]
    assert engine.compilations_after_warmup == 0


def test_speculation_stops_at_max_tokens_and_stop_ids_inside_accepted_drafts(engine,
                                                                             copy_prompt):
    prompt = copy_prompt
    sampled = SamplingParams(temperature=0.05, top_p=0.9, seed=5)  # (near-greedy: it copies)
    free = run(engine, [
        Request("cap", prompt, sampled, StoppingParams(max_tokens=21, ignore_eos=True)),
        Request("free", prompt, GREEDY, StoppingParams(max_tokens=40, ignore_eos=True))])
    assert free["cap"][-1].completion_tokens == 21 == len(tokens(free["cap"]))
    assert free["cap"][-1].num_draft_tokens > 0 and free["free"][-1].num_draft_tokens > 0
    greedy = tokens(free["free"])
    stop_id = greedy[12]
    stopped = run(engine, [Request("stop", prompt, GREEDY, StoppingParams(
        max_tokens=40, ignore_eos=True, stop_token_ids=(stop_id,)))])["stop"]
    assert tokens(stopped) == greedy[:greedy.index(stop_id) + 1]
    assert stopped[-1].stop_token_id == stop_id
    assert engine.compilations_after_warmup == 0


def test_speculation_jump_forward_and_int8_together_compile_nothing(tiny_models, copy_prompt):
    """The three decode levers on at once (int8 weights, n-gram drafts, jump-forward under a
    grammar), in one batch: drafts are proposed and accepted, forced tokens are appended, the
    constrained text validates, and no step compiles after warm-up."""
    import json

    import jsonschema

    from core.engine.startup import create_engine
    from core.structured import GrammarSpec
    from tests.core.engine.test_structured import EXTRACTION, constrained, text

    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=256, max_num_seqs=8, num_pages=20, max_num_batched_tokens=64,
        speculative_ngram=4, jump_forward=True, quantization="int8"))
    try:
        spec = GrammarSpec("json_schema", json.dumps(EXTRACTION), "response_format")
        outputs = run(engine, [
            Request("copy", copy_prompt, GREEDY, StoppingParams(max_tokens=48, ignore_eos=True)),
            constrained("json", [5, 6, 7], spec=spec, temperature=0.0)])
        assert outputs["copy"][-1].num_accepted_draft_tokens > 0
        assert engine.num_forced_tokens > 20
        jsonschema.validate(json.loads(text(outputs["json"])), EXTRACTION)
        assert engine.compilations_after_warmup == 0
    finally:
        engine.stop()
