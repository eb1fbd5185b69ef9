"""The on-device sampler: filters mean what OpenAI/vLLM say, draws follow the distribution,
and a seeded row draws the same token whatever else is in the batch."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from core.engine.request import SamplingParams
from core.engine.sampling import SamplingArrays, sample

LOGITS = np.log(np.array([0.5, 0.25, 0.15, 0.07, 0.03], np.float32))


def draw(params: list[SamplingParams], logits=LOGITS, positions=None) -> np.ndarray:
    batch = np.tile(logits, (len(params), 1))
    positions = np.zeros(len(params), np.int32) if positions is None else positions
    result = jax.jit(sample)(batch, SamplingArrays.from_params(params, len(params)), positions)
    return np.asarray(result.token_ids)


def frequencies(tokens: np.ndarray) -> np.ndarray:
    return np.bincount(tokens, minlength=len(LOGITS)) / len(tokens)


def test_greedy_and_degenerate_filters_pick_the_argmax():
    rows = [SamplingParams(temperature=0.0, seed=1), SamplingParams(top_k=1, seed=2),
            SamplingParams(top_p=1e-6, seed=3), SamplingParams(min_p=1.0, seed=4)]
    assert draw(rows).tolist() == [0, 0, 0, 0]


def test_draws_follow_the_softmax():
    tokens = draw([SamplingParams(temperature=1.0, seed=s) for s in range(4000)])
    np.testing.assert_allclose(frequencies(tokens), np.exp(LOGITS), atol=0.03)


def test_temperature_sharpens():
    tokens = draw([SamplingParams(temperature=0.5, seed=s) for s in range(4000)])
    expected = np.exp(2 * LOGITS) / np.exp(2 * LOGITS).sum()
    np.testing.assert_allclose(frequencies(tokens), expected, atol=0.03)


@pytest.mark.parametrize("params, kept", [
    (dict(top_k=2), [0, 1]),
    (dict(top_p=0.7), [0, 1]),  # 0.5 < 0.7, 0.75 ≥ 0.7: the second token completes the mass
    (dict(min_p=0.25), [0, 1, 2]),  # 0.15 ≥ 0.25 × 0.5
    # top-p applies to the top-k renormalized: [0.5, 0.25, 0.15] → [0.56, 0.28, 0.17];
    # 0.56 < 0.6 keeps the second token, 0.83 ≥ 0.6 stops before the third
    (dict(top_k=3, top_p=0.6), [0, 1]),
    (dict(top_k=2, top_p=0.6), [0]),  # [0.67, 0.33]: the first token alone reaches 0.6
])
def test_filters_keep_exactly_their_tokens_renormalized(params, kept):
    tokens = draw([SamplingParams(seed=s, **params) for s in range(4000)])
    expected = np.zeros(len(LOGITS))
    expected[kept] = np.exp(LOGITS[kept]) / np.exp(LOGITS[kept]).sum()
    assert set(np.unique(tokens)) <= set(kept)
    np.testing.assert_allclose(frequencies(tokens), expected, atol=0.03)


def test_seeded_rows_do_not_depend_on_their_batch():
    alone = draw([SamplingParams(seed=123)], positions=np.array([7], np.int32))
    crowd = [SamplingParams(seed=s) for s in range(16)]
    crowd[9] = SamplingParams(seed=123)
    positions = np.arange(16, dtype=np.int32)
    positions[9] = 7
    assert draw(crowd, positions=positions)[9] == alone[0]
    per_position = draw([SamplingParams(seed=123)] * 20, positions=np.arange(20, dtype=np.int32))
    assert len(set(per_position.tolist())) > 1  # the draw moves on with the position


def test_rows_without_top_k_or_top_p_draw_alike_whether_or_not_the_batch_sorts():
    """A batch where some row uses top-k / top-p sorts the vocabulary; one where none does
    skips the sort. A plain row's tokens must not depend on which of the two it was in."""
    logits = np.random.default_rng(0).normal(size=(1, 300)).astype(np.float32)
    plain = [SamplingParams(seed=s, min_p=0.01 * (s % 3)) for s in range(64)]
    alone = draw(plain, logits=logits)
    with_sorting = draw(plain + [SamplingParams(seed=1, top_p=0.5, top_k=7)], logits=logits)
    assert with_sorting[:64].tolist() == alone.tolist()


def test_grammar_bitmask_allows_only_its_tokens_and_keeps_raw_logprobs():
    vocab_size = 40  # two words, the second partly padding
    logits = np.random.default_rng(1).normal(size=(3, vocab_size)).astype(np.float32)
    allowed = [[3, 33], [0, 31, 32, 39], list(range(vocab_size))]  # row 2: unconstrained
    bitmask = np.zeros((3, 2), np.int64)
    for row, ids in enumerate(allowed):
        for token in ids:
            bitmask[row, token // 32] |= 1 << (token % 32)
    bitmask = bitmask.astype(np.uint32).view(np.int32)  # bit 31 makes a word negative
    for temperature in (0.0, 1.0):
        params = [SamplingParams(temperature=temperature, seed=s) for s in range(3)]
        result = jax.jit(sample)(logits, SamplingArrays.from_params(params, 3),
                                 np.zeros(3, np.int32), True, token_bitmask=bitmask,
                                 has_bitmask=True)
        for row, ids in enumerate(allowed):
            assert int(result.token_ids[row]) in ids
        raw = jax.nn.log_softmax(logits, axis=-1)
        chosen = raw[np.arange(3), np.asarray(result.token_ids)]
        np.testing.assert_allclose(np.asarray(result.logprobs), chosen, rtol=1e-5)
    greedy = [SamplingParams(temperature=0.0)] * 3
    unmasked = jax.jit(sample)(logits, SamplingArrays.from_params(greedy, 3),
                               np.zeros(3, np.int32), True, token_bitmask=bitmask,
                               has_bitmask=False)
    assert np.asarray(unmasked.token_ids).tolist() == logits.argmax(axis=-1).tolist()


def test_two_level_argmax_matches_numpy_including_ties_and_odd_vocab():
    import jax.numpy as jnp

    from core.engine.sampling import argmax_last

    rng = np.random.default_rng(0)
    for vocab_size in (7, 128, 300, 32000):
        logits = rng.standard_normal((5, vocab_size)).astype(np.float32)
        logits[0, :] = 1.0  # all tied: the first index wins
        logits[1, [3, vocab_size - 1]] = 50.0  # a tie across blocks
        np.testing.assert_array_equal(np.asarray(argmax_last(jnp.asarray(logits))),
                                      np.argmax(logits, axis=-1))


def _sorted_kept(scaled: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """The kept mask of one row by the sorted definition (the reference the bisection meets)."""
    order = np.argsort(-scaled, kind="stable")
    ranked = scaled[order]
    k = top_k if top_k > 0 else len(scaled)
    threshold = ranked[k - 1]
    probs = np.exp(ranked[:k] - ranked[0])
    probs /= probs.sum()
    if top_p < 1:
        mass_before = np.cumsum(probs) - probs
        threshold = max(threshold, ranked[:k][mass_before < top_p].min())
    if min_p > 0:
        threshold = max(threshold, ranked[0] + np.log(min_p))
    return scaled >= threshold


def test_top_k_and_top_p_cuts_equal_the_sorted_definition_on_a_large_vocabulary():
    """The cuts are found by bisection, not a sort: on 32k-token rows with ties (rounded
    logits) and -inf entries they keep exactly the tokens a sort would."""
    from core.engine.sampling import _filtered_logits

    rng = np.random.default_rng(5)
    rows = []
    for index in range(24):
        logits = np.round(rng.standard_normal(32000) * 3, 1).astype(np.float32)  # many ties
        logits[rng.integers(0, 32000, 50)] = -np.inf  # banned tokens
        rows.append(logits)
    params = [SamplingParams(temperature=[0.7, 1.0, 1.3][i % 3],
                             top_k=[0, 1, 5, 40, 1000, 0][i % 6],
                             top_p=[1.0, 0.9, 0.5, 0.99, 1e-3, 0.3][(i // 2) % 6],
                             min_p=[0.0, 0.05][i % 2], seed=i) for i in range(24)]
    batch = np.stack(rows)
    filtered = np.asarray(jax.jit(_filtered_logits)(batch, SamplingArrays.from_params(params, 24)))
    for row, (logits, p) in enumerate(zip(rows, params, strict=True)):
        scaled = logits / np.float32(p.temperature)
        expected = _sorted_kept(scaled, p.top_k, p.top_p, p.min_p) & np.isfinite(scaled)
        assert np.array_equal(np.isfinite(filtered[row]), expected), (row, p)
