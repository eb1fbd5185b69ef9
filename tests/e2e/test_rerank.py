"""Rerank and cross-encoder scoring end to end: HTTP clients against conftest's real `tandem
serve`, whose `--rerank-model` is the tiny random BERT cross-encoder the project's own script
writes (core/models/tiny_cross_encoder.py).

/v1/rerank and /rerank (Jina / Cohere v1 shape) and vLLM's text_1 / text_2 form (at /score, and
at /v1/score next to SGLang's form) give the scores
of sentence-transformers' `CrossEncoder.predict` on the same checkpoint within 1e-4, in its
ranking, pairs longer than the model truncated alike; /v2/rerank through Cohere's own SDK
(`cohere.ClientV2.rerank`); the Rerank RPC itself; and the errors, each a 400 naming its
parameter (or 404 for an unknown model).
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from tandem.limits import MAX_INPUTS
from tests.conftest import MODEL, RERANK_MODEL

QUERY = "What does the quick brown fox do?"
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model reads text as tokens and predicts the next token.",
    "Hello, world! How are you today?",
    "Français: héllo, café, crème brûlée, à bientôt.",
    "日本語: こんにちは世界",
    "fox",
    " ".join(["Serving many requests at once needs a scheduler and a cache."] * 4),  # truncated
]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def reference(tiny_cross_encoder):
    """sentence-transformers' CrossEncoder on the served checkpoint: pairs → scores."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    return lambda pairs: np.asarray(model.predict(pairs, batch_size=8), np.float64)


@pytest.fixture(scope="module")
def pair_tokens(tiny_cross_encoder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_cross_encoder))
    return lambda pairs: sum(len(tokenizer(q, d, truncation="longest_first", max_length=32)
                                 ["input_ids"]) for q, d in pairs)


def _ok(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def test_v1_rerank_matches_sentence_transformers(http, reference, pair_tokens):
    expected = reference([(QUERY, document) for document in DOCUMENTS])
    assert np.ptp(expected) > 0.05  # the random weights tell the documents apart
    body = _ok(http.post("/v1/rerank", json={"model": RERANK_MODEL, "query": QUERY,
                                             "documents": DOCUMENTS}))
    assert body["model"] == RERANK_MODEL and body["id"].startswith("rerank-")
    results = body["results"]
    assert [r["index"] for r in results] == list(np.argsort(-expected, kind="stable"))
    for result in results:
        assert abs(result["relevance_score"] - expected[result["index"]]) < 1e-4
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}  # Jina's default
    tokens = pair_tokens([(QUERY, document) for document in DOCUMENTS])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    # /rerank (vLLM's, Jina's path): top_n, documents as objects, return_documents false
    top = _ok(http.post("/rerank", json={
        "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 3,
        "return_documents": False}))  # no model: the core's reranking model
    assert [r["index"] for r in top["results"]] == [r["index"] for r in results[:3]]
    assert all("document" not in r for r in top["results"])
    top_all = _ok(http.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS[:2],
                                                "top_n": 50}))
    assert len(top_all["results"]) == 2  # top_n beyond the documents: all of them


def test_v2_rerank_through_the_cohere_sdk(server, http, reference):
    import cohere

    client = cohere.ClientV2(api_key="unused", base_url=server.base, timeout=60)
    reply = client.rerank(model=RERANK_MODEL, query=QUERY, documents=DOCUMENTS, top_n=4)
    expected = reference([(QUERY, document) for document in DOCUMENTS])
    assert [r.index for r in reply.results] == list(np.argsort(-expected, kind="stable"))[:4]
    for result in reply.results:
        assert abs(result.relevance_score - expected[result.index]) < 1e-4
    assert reply.meta.api_version.version == "2"
    assert reply.meta.tokens.input_tokens > 0
    raw = _ok(http.post("/v2/rerank", json={"model": RERANK_MODEL, "query": QUERY,
                                            "documents": DOCUMENTS[:2]}))
    assert all(set(r) == {"index", "relevance_score"} for r in raw["results"])  # no documents


def test_score_text_pairs_vllm_form(http, reference):
    one_to_many = _ok(http.post("/score", json={"model": RERANK_MODEL, "text_1": QUERY,
                                                "text_2": DOCUMENTS}))
    assert one_to_many["object"] == "list" and one_to_many["model"] == RERANK_MODEL
    expected = reference([(QUERY, document) for document in DOCUMENTS])
    assert [d["index"] for d in one_to_many["data"]] == list(range(len(DOCUMENTS)))
    np.testing.assert_allclose([d["score"] for d in one_to_many["data"]], expected, atol=1e-4)
    firsts = ["cats", "The lazy dog", "42"]
    pairwise = _ok(http.post("/v1/score", json={"text_1": firsts, "text_2": DOCUMENTS[:3]}))
    np.testing.assert_allclose([d["score"] for d in pairwise["data"]],
                               reference(list(zip(firsts, DOCUMENTS[:3], strict=True))),
                               atol=1e-4)
    assert pairwise["usage"]["prompt_tokens"] == pairwise["usage"]["total_tokens"] > 0


def test_rerank_rpc(server, reference):
    from tandem.v1 import inference_pb2 as pb
    from tandem.v1 import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        reply = stub.Rerank(pb.RerankRequest(query=QUERY, documents=DOCUMENTS, top_n=2),
                            timeout=60)
        expected = reference([(QUERY, document) for document in DOCUMENTS])
        assert reply.model == RERANK_MODEL
        assert [r.index for r in reply.results] == list(np.argsort(-expected, kind="stable"))[:2]
        with pytest.raises(grpc.RpcError) as zero:
            stub.Rerank(pb.RerankRequest(query=QUERY, documents=DOCUMENTS, top_n=0), timeout=60)
        assert zero.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "top_n" in zero.value.details()


@pytest.mark.parametrize("path, body, status, param, code", [
    ("/v1/rerank", {"documents": ["a"]}, 400, "query", None),
    ("/v1/rerank", {"query": "", "documents": ["a"]}, 400, "query", None),
    ("/v1/rerank", {"query": "q", "documents": []}, 400, "documents", None),
    ("/v2/rerank", {"query": "q"}, 400, "documents", None),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * (MAX_INPUTS + 1)}, 400, "documents",
     None),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 400, "top_n", None),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, 400, "top_n", None),
    ("/v1/rerank", {"query": "q", "documents": [{"title": "no text"}]}, 400, "documents[0]",
     None),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": 8}, 400,
     "max_tokens_per_doc", "unsupported_parameter"),
    ("/v1/rerank", {"model": MODEL, "query": "q", "documents": ["a"]}, 400, "model",
     "unsupported_parameter"),
    ("/v1/rerank", {"model": "no-such-model", "query": "q", "documents": ["a"]}, 404, "model",
     "model_not_found"),
    ("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400, "text_1", None),
    ("/score", {"text_1": "a", "text_2": []}, 400, "text_2", None),
    ("/v1/score", {"text_1": "", "text_2": ["a"]}, 400, "text_1", None),
])
def test_errors_name_the_parameter(http, path, body, status, param, code):
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
