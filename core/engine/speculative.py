"""N-gram speculation with no draft model: proposals copied from the sequence itself, and the
rule that turns speculation off for a request (pure Python, no JAX).

Owns: `propose()`, prompt lookup — the last `n` tokens of prompt + output (n from
`MAX_NGRAM` down to `MIN_NGRAM`) matched at their latest earlier occurrence, and the tokens
that followed it proposed as drafts; `eligible()`, which requests may speculate (the logits
stages that read a per-position history or state — penalties, bias rows, bad words, a grammar,
min_tokens — are not applied per drafted position, so such requests decode one token a step);
and `keep_speculating()`, which switches a request off when its acceptance stays low.

The drafts of a sequence ride one chunk, (last token, d1 … dk), computed in one forward that
returns logits at every position (`ModelRunner` verify calls); `core/engine/sampling.py`'s
`verify_sample` accepts draft x with probability p(x) under the request's own sampling
pipeline and otherwise samples from p with x removed (exact rejection sampling for a one-hot
draft), greedy rows accept iff x is the argmax. The KV written for rejected drafts lies past
the sequence's computed tokens and is overwritten by later steps.
"""

from __future__ import annotations

import numpy as np

from core.engine.request import Request, TokenLogprob

MAX_NGRAM = 3  # longest suffix matched
MIN_NGRAM = 2  # shortest suffix matched (1 proposes too often on fresh text)
MIN_DRAFTS_JUDGED = 32  # proposed tokens before acceptance can switch a request off
MIN_ACCEPTANCE = 0.2  # below this share of accepted drafts, the request stops speculating
LOOKBACK_TOKENS = 4096  # how far back a match is searched


def eligible(request: Request) -> bool:
    """May the request speculate at all (its sampling pipeline is position-independent)?"""
    sampling = request.sampling
    return (request.grammar is None and request.score_label_ids is None
            and not sampling.uses_row_state and not sampling.bad_words_token_ids)


def propose(token_ids: list[int], max_drafts: int) -> tuple[int, ...]:
    """Up to `max_drafts` tokens that followed the latest earlier occurrence of the sequence's
    final n-gram (longest n first); () when none matches."""
    if max_drafts <= 0:
        return ()
    window = token_ids[-LOOKBACK_TOKENS:]
    length = len(window)
    for n in range(MAX_NGRAM, MIN_NGRAM - 1, -1):
        if length <= n:
            continue
        suffix = window[-n:]
        first = suffix[0]
        # latest start < length - n whose n tokens equal the suffix
        start = length - n - 1
        while start >= 0:
            try:
                start = _rindex(window, first, start)
            except ValueError:
                break
            if window[start:start + n] == suffix:
                drafts = window[start + n:start + n + max_drafts]
                if drafts:
                    return tuple(drafts)
            start -= 1
    return ()


def _rindex(values: list[int], value: int, end: int) -> int:
    """The largest index ≤ end holding value (ValueError if none)."""
    for index in range(end, -1, -1):
        if values[index] == value:
            return index
    raise ValueError(value)


def keep_speculating(request: Request) -> bool:
    """After a verify step: False once enough drafts were judged and too few were accepted."""
    return not (request.num_draft_tokens >= MIN_DRAFTS_JUDGED and request.num_accepted_draft_tokens
                < MIN_ACCEPTANCE * request.num_draft_tokens)


def num_accepted(verified) -> int:
    """How many of a verified chunk's drafts were accepted: the leading run (a
    `core.engine.verifier.VerifiedChunk`)."""
    rejected = np.flatnonzero(~verified.accepted[:-1])
    return int(rejected[0]) if len(rejected) else len(verified.accepted) - 1


def verified_tokens(drafts: tuple[int, ...], verified, accepted: int,
                    num_top: int) -> list[TokenLogprob]:
    """The tokens a verified chunk emits, each with its raw logprob (and `num_top`
    alternatives): the accepted drafts, then the token sampled where the next draft was
    rejected, or the bonus token after the last."""
    def entry(position: int, token_id: int) -> TokenLogprob:
        top = tuple((int(i), float(lp)) for i, lp in zip(
            verified.top_ids[position][:num_top], verified.top_logprobs[position][:num_top],
            strict=True))
        return TokenLogprob(token_id, float(verified.logprobs[position]), top)

    return ([entry(i, drafts[i]) for i in range(accepted)]
            + [entry(accepted, int(verified.token_ids[accepted]))])
