"""Benchmark prompts: reproducible random token-id prompts, shared by the benchmark scripts.

Owns `make_prompts`, the one place that turns (count, length, seed, shared prefix) into token-id
lists, so that `bench_serving.py` and `bench_baseline.py` (Tandem and Hugging Face alike) send
exactly the same tokens. Not a CLI:

    from bench_prompts import make_prompts
    prompts = make_prompts(num_prompts=32, prompt_len=128, seed=0)
"""

from __future__ import annotations

import numpy as np

FIRST_ORDINARY_TOKEN_ID = 16  # ids below are special tokens (0-4) or bytes we keep clear of
DEFAULT_VOCAB_LIMIT = 2000  # the tiny tokenizers' real vocabulary is 2,048 (the model's 32,000)


def make_prompts(num_prompts: int, prompt_len: int, seed: int, shared_prefix_len: int = 0,
                 vocab_limit: int = DEFAULT_VOCAB_LIMIT) -> list[list[int]]:
    """`num_prompts` prompts of `prompt_len` token ids each, drawn uniformly from
    [16, vocab_limit) with `numpy.random.default_rng(seed)`.

    With `shared_prefix_len` > 0 every prompt starts with the same random prefix of that many
    tokens and ends with its own random suffix of `prompt_len - shared_prefix_len` tokens
    (`prompt_len` is the whole prompt's length, prefix included).
    """
    if num_prompts < 1 or prompt_len < 1:
        raise ValueError("num_prompts and prompt_len must be at least 1")
    if not 0 <= shared_prefix_len < prompt_len:
        raise ValueError(f"shared_prefix_len ({shared_prefix_len}) must be in [0, prompt_len "
                         f"({prompt_len})): every prompt needs a suffix of its own")
    if vocab_limit <= FIRST_ORDINARY_TOKEN_ID + 1:
        raise ValueError(f"vocab_limit must be above {FIRST_ORDINARY_TOKEN_ID + 1}")
    rng = np.random.default_rng(seed)
    prefix = rng.integers(FIRST_ORDINARY_TOKEN_ID, vocab_limit, size=shared_prefix_len)
    suffix_len = prompt_len - shared_prefix_len
    suffixes = rng.integers(FIRST_ORDINARY_TOKEN_ID, vocab_limit, size=(num_prompts, suffix_len))
    return [[int(token_id) for token_id in prefix] + [int(token_id) for token_id in suffix]
            for suffix in suffixes]
