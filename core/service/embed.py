"""Embed requests: validating an `EmbedRequest`'s inputs into token ids, and shaping the reply.

Owns: the checks of Embed's inputs (count, empty strings, token ids in the vocabulary, length
against the model's context), `dimensions` (truncate, then re-normalize to unit length, as
OpenAI's text-embedding-3 models do) and the `EmbedResponse`. The batching itself is the
embedding engine's (`core/engine/embedding.py`).
"""

from __future__ import annotations

import numpy as np

from core.errors import ContextLengthExceeded, InvalidParameter
from core.service.convert import PromptPolicy, check_token_ids
from core.tokenizer import Tokenizer
from tandem.limits import MAX_INPUTS
from tandem.v1 import inference_pb2 as pb


def embed_inputs(tokenizer: Tokenizer, policy: PromptPolicy,
                 request: pb.EmbedRequest) -> list[list[int]]:
    """Each input's token ids, validated (CPU-bound: call it off the event loop). Text gets the
    tokenizer's special tokens (BERT's [CLS] … [SEP]); token ids are used as given."""
    if not request.inputs:
        raise InvalidParameter("input must not be empty", param="input")
    if len(request.inputs) > MAX_INPUTS:
        raise InvalidParameter(f"at most {MAX_INPUTS} inputs per request", param="input")
    result = []
    for index, item in enumerate(request.inputs):
        kind = item.WhichOneof("input")
        if kind == "text":
            if not item.text:
                raise InvalidParameter(f"input[{index}] is an empty string", param="input")
            if len(item.text) > policy.max_prompt_chars:
                _too_long(index, None, policy)
            ids = tokenizer.encode(item.text)
        elif kind == "tokens":
            ids = list(item.tokens.ids)
            check_token_ids(ids, policy.vocab_size, "input")
        else:
            raise InvalidParameter(f"input[{index}] must be text or token ids", param="input")
        if not ids:
            raise InvalidParameter(f"input[{index}] has no tokens", param="input")
        if len(ids) > policy.max_model_len:
            _too_long(index, len(ids), policy)
        result.append(ids)
    return result


def _too_long(index: int, num_tokens: int | None, policy: PromptPolicy) -> None:
    size = f"{num_tokens} tokens" if num_tokens is not None else "more text than fits"
    raise ContextLengthExceeded(
        f"input[{index}] has {size}; this model embeds at most {policy.max_model_len} tokens "
        "per input. Please shorten it.", param="input",
        metadata={"max_model_len": str(policy.max_model_len)})


def check_dimensions(dimensions: int | None, size: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= size:
        raise InvalidParameter(f"dimensions must be between 1 and {size}, the model's size; "
                               f"got {dimensions}", param="dimensions")


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first `dimensions` values and re-normalize to unit length."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    kept = vectors[:, :dimensions]
    return kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)


def embed_response(vectors: np.ndarray, dimensions: int | None, token_ids: list[list[int]],
                   model: str) -> pb.EmbedResponse:
    """The reply: each input's vector (cut to `dimensions`) and the prompt tokens embedded."""
    vectors = truncate_dimensions(vectors, dimensions)
    return pb.EmbedResponse(
        embeddings=[pb.Embedding(index=index, values=vector.tolist())
                    for index, vector in enumerate(vectors)],
        usage=pb.Usage(prompt_tokens=sum(len(ids) for ids in token_ids)), model=model)
