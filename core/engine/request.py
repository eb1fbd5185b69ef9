"""Internal request types of the core: what the engine schedules and what it reports.

Owns: `SamplingParams`, `StoppingParams`, `Request` (a prompt plus its generation state),
`FinishReason`, `RequestOutput` (one request's progress in one engine step) and
`SequenceChunk`/`SchedulerOutput` (what the scheduler hands the runner).
These are the boundary types between servicer, engine, scheduler and runner.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from core.structured import GrammarSpec

MAX_BANNED_IDS = 64  # multi-token bad words whose last token one step can ban
MAX_MIN_TOKENS_IDS = 64  # EOS + stop_token_ids masked under min_tokens


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context length
    ABORT = "abort"  # the server aborted it (not a client cancel)


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is picked; defaults are neutral."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass kept, (0, 1]
    top_k: int = 0  # 0 = all tokens
    min_p: float = 0.0  # drop tokens below min_p × the top probability
    seed: int | None = None  # None: the engine draws one; 0 ≤ seed < 2**64
    choice_index: int = 0  # which of the request's n choices (folded into the random key)
    presence_penalty: float = 0.0  # OpenAI: minus this once a token was generated, [-2, 2]
    frequency_penalty: float = 0.0  # OpenAI: minus this per time a token was generated
    repetition_penalty: float = 1.0  # HF/vLLM: prompt and generated tokens' logits ÷ (or ×) this
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100]) added
    allowed_token_ids: tuple[int, ...] | None = None  # None: every id; else only these
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()  # sequences never generated

    @property
    def uses_penalties(self) -> bool:
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)

    @property
    def uses_row_state(self) -> bool:
        """Needs a row of per-sequence state on device (penalty counts, a bias row)."""
        return (self.uses_penalties or bool(self.logit_bias)
                or self.allowed_token_ids is not None
                or any(len(word) == 1 for word in self.bad_words_token_ids))


@dataclass(frozen=True)
class StoppingParams:
    """When a request is finished and what its text includes."""

    max_tokens: int  # completion tokens at most (already capped by the context length)
    min_tokens: int = 0  # EOS, stop ids and stop strings cannot end it before this many
    stop_strings: tuple[str, ...] = ()  # end when the text contains one of these
    stop_token_ids: tuple[int, ...] = ()  # end on these token ids (besides EOS)
    ignore_eos: bool = False  # keep going past EOS
    include_stop_str_in_output: bool = False  # keep the matched stop string in the text
    skip_special_tokens: bool = True  # leave special tokens out of the text
    detokenize: bool = True  # False: token ids only, no text (and so no stop strings)


@dataclass
class Request:
    """One sequence to generate; the engine thread owns its mutable state."""

    request_id: str  # unique per sequence (the RPC's id plus the choice index)
    prompt_token_ids: list[int]
    sampling: SamplingParams
    stopping: StoppingParams
    want_logprobs: bool = False  # report the chosen token's logprob
    top_logprobs: int = 0  # alternatives per token, ≤ MAX_TOP_LOGPROBS
    cache_salt: str = ""  # prefix-cache namespace: pages are shared only within one salt
    group_id: str = ""  # the choices of one call share it (and their prompt): n > 1
    # under the "priority" scheduling policy: lower is admitted first (vLLM's convention)
    priority: int = 0
    # Set: a prefill-only request (Score). Instead of sampling, it reports the next-token
    # log-probabilities of these ids after its prompt and finishes; () only fills the cache.
    score_label_ids: tuple[int, ...] | None = None
    # Set: report the prompt's logprobs (this many alternatives per position); the prompt is
    # then computed in full (never served from the prefix cache), its first token has none
    prompt_logprobs: int | None = None
    grammar: GrammarSpec | None = None  # constrain the output (llguidance); None: free text
    output_token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float = 0.0  # sum of the chosen tokens' raw logprobs
    finish_reason: FinishReason | None = None
    # Scheduler state (engine thread only)
    page_ids: list[int] = field(default_factory=list)  # page table: KV of positions in order
    num_computed_tokens: int = 0  # tokens whose KV is in the pages
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    num_preemptions: int = 0  # times its pages were taken back (it recomputes them)
    admitted: bool = False  # has been admitted once (prefix-cache stats count it once)
    arrival_seq: int = 0  # the scheduler's count when it was added (ties of priority)
    row_slot: int | None = None  # its row of on-device logits state while it holds pages
    # n-gram speculation (core/engine/speculative.py): still on for this request, and the
    # draft tokens proposed and accepted so far
    speculating: bool = False
    num_draft_tokens: int = 0
    num_accepted_draft_tokens: int = 0
    # prompt position (≥ 1) → TokenLogprob of its token, filled by the prefill chunks
    prompt_logprob_entries: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob) alternatives, best first


@dataclass(frozen=True)
class RequestOutput:
    """What one request produced in one engine step."""

    request_id: str
    new_token_ids: tuple[int, ...]
    text_delta: str  # UTF-8 safe; stop strings resolved
    logprobs: tuple[TokenLogprob, ...] = ()  # one per new token when asked for
    finish_reason: FinishReason | None = None
    stop_string: str | None = None  # the stop string that ended it
    stop_token_id: int | None = None  # the stop token id that ended it (not EOS)
    completion_tokens: int = 0  # cumulative
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    label_logprobs: tuple[float, ...] = ()  # Score: log p(label | prompt), per label id
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # prompt positions 1.. (first output only)
    cumulative_logprob: float = 0.0  # sum of the chosen tokens' raw logprobs so far
    num_draft_tokens: int = 0  # cumulative: n-gram draft tokens proposed (speculation)
    num_accepted_draft_tokens: int = 0  # ... of which the model's sampling accepted
    error: str | None = None  # the engine failed this request (an internal error)...
    error_param: str | None = None  # ...unless set: the request's own constraint failed


@dataclass(frozen=True)
class SequenceChunk:
    """One sequence's work in a step: feed `token_ids` at positions start_position, … ."""

    request_id: str
    token_ids: tuple[int, ...]  # 1 for a decode; a prefill chunk otherwise
    start_position: int  # position of token_ids[0]
    page_ids: tuple[int, ...]  # the sequence's page table, covering every position fed
    sampling: SamplingParams
    wants_sample: bool  # the chunk ends at the sequence's last token: sample the next one
    wants_scores: bool = False  # ...and the full next-token log-softmax is wanted (Score)
    row_slot: int | None = None  # the sequence's row of on-device logits state, if any
    # Set on the first chunk after (re)admission of a sequence with a row slot: its tokens so
    # far and how many of them are the prompt — the row is rebuilt from them before the step
    row_init: tuple[tuple[int, ...], int] | None = None
    banned_token_ids: tuple[int, ...] = ()  # bad words' last tokens whose prefix just matched
    min_tokens_ids: tuple[int, ...] = ()  # EOS and stop ids, masked while under min_tokens
    # prompt_logprobs: the prompt tokens that the chunk's positions predict (scored in order:
    # position start_position + i predicts prompt_targets[i]); () = nothing to score
    prompt_targets: tuple[int, ...] = ()
    # speculation: the chunk is (last token, *draft_token_ids), verified in one forward — each
    # position's next token is sampled, the drafts accepted or rejected (core/engine/speculative.py)
    draft_token_ids: tuple[int, ...] = ()

    @property
    def wants_prompt_logprobs(self) -> bool:
        return bool(self.prompt_targets)


@dataclass(frozen=True)
class SchedulerOutput:
    """Everything one engine step computes (at most the step's token budget)."""

    chunks: tuple[SequenceChunk, ...]
    wants_logprobs: bool = False  # some sampling chunk reports top logprobs

    @property
    def num_tokens(self) -> int:
        return sum(len(chunk.token_ids) for chunk in self.chunks)
