"""/v1/score and /v1/embeddings end to end: the official `openai` SDK against the real
`tandem serve` of conftest (the tiny Llama plus the bundled all-MiniLM-L6-v2).

Seed 000 (SGLang's scoring API through
`client.post("/score", body=..., cast_to=dict[str, Any])`): basic, error handling, token input,
a 20-item batch, Unicode, special characters. Seeds 001/004:
embeddings as base64 (little-endian float32) decode to the float response; `dimensions`.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import openai
import pytest

from core.models.bundled import default_embedding_model_dir
from tests.conftest import MODEL, RERANK_MODEL, SERVER_MAX_MODEL_LEN

MINILM = "all-MiniLM-L6-v2"
SENTENCES = ["The cat sits on the mat.", "Une phrase en français.", "日本語 🙂", "42"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="module")
def single_token_id(tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models["llama"]))

    def lookup(text: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == 1, (text, ids)
        return ids[0]

    return lookup


def score(client, **body) -> dict:
    return client.post("/score", body={"model": MODEL, **body}, cast_to=dict[str, Any])


# -- /v1/score (seed 000) -----------------------------------------------------------------------


def test_score_basic_softmax(client, single_token_id):
    labels = [single_token_id(t) for t in (" the", " a", " and")]
    response = score(client, query="The capital of France is",
                     items=[" Paris", " London", " Berlin"], label_token_ids=labels,
                     apply_softmax=True, item_first=False)
    assert response["object"] == "scoring" and response["model"] == MODEL
    assert isinstance(response["created"], int)
    assert len(response["scores"]) == 3
    for scores in response["scores"]:
        assert len(scores) == 3 and all(isinstance(s, float) for s in scores)
        assert abs(sum(scores) - 1.0) < 1e-6
    usage = response["usage"]
    assert usage["completion_tokens"] == 0
    assert usage["total_tokens"] == usage["prompt_tokens"] > 0


def test_score_without_softmax_gives_full_vocabulary_probabilities(client, single_token_id):
    labels = [single_token_id(t) for t in (" the", " a")]
    response = score(client, query="Score these:", items=[" x", " y"], label_token_ids=labels)
    for scores in response["scores"]:
        assert all(0.0 < s < 1.0 for s in scores) and sum(scores) < 1.0


def test_score_error_handling(client):
    with pytest.raises(openai.BadRequestError) as empty:
        score(client, query="Test", items=[], label_token_ids=[123])
    assert empty.value.status_code == 400
    assert empty.value.body["param"] == "items"
    with pytest.raises(openai.BadRequestError) as outside:
        score(client, query="Test", items=["a"], label_token_ids=[10**6])
    assert outside.value.body["param"] == "label_token_ids"
    with pytest.raises(openai.BadRequestError) as mixed:
        score(client, query="Test", items=[[1, 2]], label_token_ids=[5])
    assert mixed.value.body["param"].startswith("items")
    with pytest.raises(openai.BadRequestError) as too_long:
        score(client, query=[7] * SERVER_MAX_MODEL_LEN, items=[[5] * 20], label_token_ids=[5])
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as wrong_model:
        client.post("/score", body={"model": MINILM, "query": "q", "items": ["a"],
                                    "label_token_ids": [5]}, cast_to=dict[str, Any])
    assert wrong_model.value.body["code"] == "unsupported_parameter"


def test_score_token_input_and_shared_query_is_cached(client):
    query = list(range(10, 60))  # 50 tokens: three whole pages shared by every item
    response = score(client, query=query, items=[[311, 278, 73], [310, 278, 33]],
                     label_token_ids=[311, 310], apply_softmax=False)
    assert len(response["scores"]) == 2
    assert response["usage"]["prompt_tokens"] == 2 * 53
    assert response["usage"]["prompt_tokens_details"]["cached_tokens"] == 2 * 48


def test_score_twenty_items_unicode_and_special_characters(client, single_token_id):
    labels = [single_token_id(t) for t in (" the", " a")]
    twenty = score(client, query="Score these items:", items=[f" item{i}" for i in range(20)],
                   label_token_ids=labels, apply_softmax=True)
    assert len(twenty["scores"]) == 20
    unicode = score(client, query="Translate: こんにちは", items=[" Hello", " Goodbye", " Thanks"],
                    label_token_ids=labels, apply_softmax=True)
    assert len(unicode["scores"]) == 3
    special = score(client, query="Test with special chars: @#$%^&*()",
                    items=[" option<1>", ' option"2"', " option'3'"], label_token_ids=labels,
                    apply_softmax=True)
    assert len(special["scores"]) == 3


# -- /v1/embeddings ------------------------------------------------------------------------------


def test_embeddings_match_sentence_transformers_and_base64_equals_float(client):
    from sentence_transformers import SentenceTransformer

    as_float = client.embeddings.create(model=MINILM, input=SENTENCES, encoding_format="float")
    as_base64 = client.post(
        "/embeddings", body={"model": MINILM, "input": SENTENCES, "encoding_format": "base64"},
        cast_to=dict[str, Any])
    by_sdk_default = client.embeddings.create(model=MINILM, input=SENTENCES)  # base64 inside
    reference = SentenceTransformer(str(default_embedding_model_dir()), device="cpu").encode(
        SENTENCES)
    assert as_float.model == MINILM and len(as_float.data) == len(SENTENCES)
    for index, item in enumerate(as_float.data):
        ours = np.asarray(item.embedding, np.float32)
        decoded = np.frombuffer(base64.b64decode(as_base64["data"][index]["embedding"]), "<f4")
        np.testing.assert_array_equal(decoded, ours)
        np.testing.assert_array_equal(np.asarray(by_sdk_default.data[index].embedding,
                                                 np.float32), ours)
        cosine = ours @ reference[index] / np.linalg.norm(reference[index])
        assert cosine >= 0.99999
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > len(SENTENCES)


def test_embeddings_dimensions_token_input_and_errors(client):
    short = client.embeddings.create(model=MINILM, input="hello world", dimensions=32,
                                     encoding_format="float")
    vector = np.asarray(short.data[0].embedding)
    assert vector.shape == (32,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    tokens = client.embeddings.create(model=MINILM, input=[[101, 7592, 2088, 102]],
                                      encoding_format="float")
    assert len(tokens.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as too_big:
        client.embeddings.create(model=MINILM, input="hi", dimensions=385)
    assert too_big.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=MINILM, input="word " * 400)
    assert too_long.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as generative:
        client.embeddings.create(model=MODEL, input="hi")
    assert generative.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")


def test_models_lists_both(client):
    assert [model.id for model in client.models.list().data] == [MODEL, MINILM, RERANK_MODEL]
