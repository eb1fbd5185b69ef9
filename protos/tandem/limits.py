"""The request limits of the contract, in one place: the core enforces them on every RPC (gRPC
clients reach it directly) and the facade's own caps default to them, so both sides agree.
Stdlib only: the facade imports it without the core's dependencies."""

MAX_CHOICES = 16  # choices per request (`n`, completions' `best_of`)
MAX_STOP_STRINGS = 16  # stop strings per request
MAX_LOGIT_BIAS_ENTRIES = 300  # entries of `logit_bias`
MAX_TOP_LOGPROBS = 20  # alternatives per token (`top_logprobs`, `logprobs`, `prompt_logprobs`)
MAX_INPUTS = 2048  # inputs of one Embed request, items of one Score request (as OpenAI's)
# A request's `priority` (lower first under --scheduling-policy priority): the facade's
# validation and the core's.
MIN_PRIORITY, MAX_PRIORITY = -1_000_000, 1_000_000
