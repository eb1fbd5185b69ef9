"""Rerank requests: validating a `RerankRequest`, tokenizing its pairs, shaping the reply.

Owns: the checks of Rerank's inputs (a query, or one query per document; documents present and
not too many; `top_n` at least 1), the pair encoding (the tokenizer's own: `[CLS] query [SEP]
document [SEP]` with token types 0 then 1 for BERT, truncated longest-first to the model's
length, as sentence-transformers' CrossEncoder does — a long document is cut, not refused) and
the `RerankResponse` (best first, at most `top_n`). The batched forward is the embedding
engine's (`core/engine/embedding.py`, with token types); the model is
`core/models/cross_encoder.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InvalidParameter
from core.service.convert import PromptPolicy
from core.tokenizer import Tokenizer
from tandem.limits import MAX_INPUTS
from tandem.v1 import inference_pb2 as pb


@dataclass(frozen=True)
class RerankPairs:
    """The tokenized pairs of one request, one per document, in document order."""

    token_ids: list[list[int]]
    token_type_ids: list[list[int]]  # 0: the query's tokens, 1: the document's

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)


def check_rerank_request(request: pb.RerankRequest) -> list[str]:
    """The first text of each pair (one per document), or the typed error naming the field."""
    documents = request.documents
    if not documents:
        raise InvalidParameter("documents must not be empty", param="documents")
    if len(documents) > MAX_INPUTS:
        raise InvalidParameter(f"at most {MAX_INPUTS} documents per request; got "
                               f"{len(documents)}", param="documents")
    if request.HasField("top_n") and request.top_n < 1:
        raise InvalidParameter(f"top_n must be at least 1; got {request.top_n}", param="top_n")
    if request.queries:
        if request.query:
            raise InvalidParameter("give query or queries, not both", param="queries")
        if len(request.queries) != len(documents):
            raise InvalidParameter(f"queries has {len(request.queries)} texts for "
                                   f"{len(documents)} documents: give one per document",
                                   param="queries")
        if not all(request.queries):
            raise InvalidParameter("queries must not contain empty texts", param="queries")
        return list(request.queries)
    if not request.query:
        raise InvalidParameter("query is required (a non-empty text)", param="query")
    return [request.query] * len(documents)


def rerank_pairs(tokenizer: Tokenizer, policy: PromptPolicy,
                 request: pb.RerankRequest) -> RerankPairs:
    """Each (query, document) pair's token ids and token types, validated and truncated to the
    model's length (CPU-bound: call it off the event loop). Text length is bounded by the
    facade's body limit; the tokenizer cuts what does not fit."""
    queries = check_rerank_request(request)
    encoded = tokenizer.hf_tokenizer(queries, list(request.documents),
                                     truncation="longest_first",
                                     max_length=policy.max_model_len)
    token_ids = [list(ids) for ids in encoded["input_ids"]]
    types = encoded.get("token_type_ids")  # tokenizers without segments: all 0
    token_type_ids = ([list(row) for row in types] if types is not None
                      else [[0] * len(ids) for ids in token_ids])
    return RerankPairs(token_ids, token_type_ids)


def rerank_response(scores: np.ndarray, request: pb.RerankRequest, pairs: RerankPairs,
                    model: str) -> pb.RerankResponse:
    """scores [documents] → results best first (equal scores: the lower index first), cut to
    `top_n`; usage counts every pair's tokens."""
    order = sorted(range(len(scores)), key=lambda index: (-float(scores[index]), index))
    if request.HasField("top_n"):
        order = order[:request.top_n]
    return pb.RerankResponse(
        results=[pb.RerankResult(index=index, relevance_score=float(scores[index]))
                 for index in order],
        usage=pb.Usage(prompt_tokens=pairs.num_tokens), model=model)
