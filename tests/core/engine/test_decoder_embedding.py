"""Embeddings from a decoder (`--decoder-pooling`): the engine's batched, bucketed pooling of
the tiny Llama's hidden states against Hugging Face transformers (PyTorch) on the same ids."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import EngineConfig

torch = pytest.importorskip("torch")

LENGTHS = (1, 5, 16, 17, 40, 100, 230)


@pytest.fixture(scope="module")
def engine(tiny_models):
    """The decoder whose weights the embedders share. Its own generation buckets are never run
    here, so they are not compiled (warmup=False)."""
    from core.engine.startup import create_engine

    engine = create_engine(tiny_models["llama"], EngineConfig(max_model_len=256, max_num_seqs=2),
                           warmup=False)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def embedders(engine):
    """One started embedder per pooling, built (compiled) on first use, shared by the module."""
    from core.service.served_models import _decoder_embedder

    started = {}

    def get(pooling: str):
        if pooling not in started:
            started[pooling] = _decoder_embedder(engine, engine.model_config,
                                                 engine.engine_config, pooling)
        return started[pooling]

    yield get
    for embedder in started.values():
        embedder.stop()


@pytest.fixture(scope="module")
def reference(tiny_models):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()

    def pooled(ids: list[int], pooling: str) -> np.ndarray:
        with torch.no_grad():  # the last hidden state is after the final norm, as ours
            hidden = model(torch.tensor([ids])).last_hidden_state[0].double().numpy()
        vector = hidden[-1] if pooling == "last" else hidden.mean(axis=0)
        return vector / np.linalg.norm(vector)

    return pooled


def token_lists(seed: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [rng.randint(5, 500, size=n).tolist() for n in LENGTHS]


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_matches_transformers(engine, embedders, reference, pooling):
    embedder = embedders(pooling)
    inputs = token_lists()
    first, second = embedder.submit(inputs[:4]), embedder.submit(inputs[4:])  # one batch
    vectors = np.concatenate([first.result(timeout=120), second.result(timeout=120)])
    assert vectors.shape == (len(LENGTHS), engine.model_config.hidden_size)
    for ids, vector in zip(inputs, vectors, strict=True):
        expected = reference(ids, pooling)
        np.testing.assert_allclose(vector, expected, atol=1e-5)
        assert float(vector @ expected) >= 0.99999
    assert embedder.compilations_after_warmup == 0


def test_cancelled_jobs_are_dropped_and_the_engine_keeps_serving(embedders, reference):
    embedder = embedders("last")
    inputs = token_lists(seed=1)
    big = embedder.submit(inputs * 30)  # 210 inputs: several calls
    assert big.cancel()  # the RPC went away: the rest of its work is skipped
    small = embedder.submit(inputs[:2])
    vectors = small.result(timeout=120)
    for ids, vector in zip(inputs[:2], vectors, strict=True):
        np.testing.assert_allclose(vector, reference(ids, "last"), atol=1e-5)
    assert big.cancelled()


def test_too_many_queued_inputs_is_overloaded(embedders):
    from core.errors import Overloaded

    embedder = embedders("mean")
    limit = embedder.max_pending_inputs
    try:
        embedder.max_pending_inputs = 8
        first = embedder.submit(token_lists()[:5])
        with pytest.raises(Overloaded):
            embedder.submit(token_lists()[:5])  # 10 > 8 waiting inputs
        first.result(timeout=120)
        embedder.submit(token_lists()[:5]).result(timeout=120)  # room again once embedded
    finally:
        embedder.max_pending_inputs = limit


def test_encoder_buckets_capped_in_rows_drop_the_larger_calls():
    from core.engine.embedding import EmbeddingBuckets

    buckets = EmbeddingBuckets(packed_fractions=(0.5,)).for_max_len(64)
    capped = buckets.with_max_rows(16)
    assert capped.batch_sizes == (1, 4, 16) and capped.lengths == buckets.lengths
    assert {rows for rows, _, _ in capped.shapes()} == {1, 4, 16}
    assert all(packed is None for _, _, packed in capped.shapes())  # packing needs 64 rows
    assert len(buckets.shapes()) == 3 * 4 + 3  # with 64-row calls, plain and packed (one fraction)
    assert buckets.with_max_rows(1).batch_sizes == (1,)
