"""Score: the next-token probabilities of label tokens after query+item prompts.

Owns: validating a `ScoreRequest`, building one prompt per item (query+item, or item+query with
`item_first`), running the prompts through the generation engine as prefill-only requests, and
turning the labels' log-probabilities into scores.

Prompts follow SGLang: text is joined as text and then tokenized (with the tokenizer's special
tokens); token ids are joined as given. Shared work is done once: the longest prefix common to
every prompt (the query, unless `item_first`) is prefilled first, alone, so its pages enter the
radix prefix cache; then every item is submitted at once and branches from those pages, and the
engine batches them. Usage reports the items' prompt tokens and how many came from the cache.

Scores: with `apply_softmax`, the softmax over the label ids' logits (it sums to 1); without
it, each label id's probability under the full next-token distribution (what SGLang returns
too; the numbers need not sum to 1).
"""

from __future__ import annotations

import asyncio

import numpy as np

from core.engine.loop import Engine
from core.engine.request import Request, RequestOutput, SamplingParams, StoppingParams
from core.errors import ContextLengthExceeded, InvalidParameter, TandemError
from core.service.convert import PromptPolicy, check_token_ids
from core.tokenizer import Tokenizer
from tandem.limits import MAX_INPUTS as MAX_ITEMS  # items per request
from tandem.v1 import inference_pb2 as pb

GREEDY = SamplingParams(temperature=0.0)
MAX_LABELS = 1024  # label ids per request: each item reports one number per label


def score_prompts(tokenizer: Tokenizer, policy: PromptPolicy,
                  request: pb.ScoreRequest) -> list[list[int]]:
    """One prompt's token ids per item, validated (CPU-bound: call it off the event loop)."""
    kind = request.query.WhichOneof("input")
    if kind is None:
        raise InvalidParameter("query is required (text or token ids)", param="query")
    if not request.items:
        raise InvalidParameter("items must not be empty", param="items")
    if len(request.items) > MAX_ITEMS:
        raise InvalidParameter(f"at most {MAX_ITEMS} items per request", param="items")
    if not request.label_token_ids:
        raise InvalidParameter("label_token_ids must not be empty", param="label_token_ids")
    if len(request.label_token_ids) > MAX_LABELS:
        raise InvalidParameter(f"at most {MAX_LABELS} label_token_ids", param="label_token_ids")
    check_token_ids(request.label_token_ids, policy.vocab_size, "label_token_ids")
    if any(item.WhichOneof("input") != kind for item in request.items):
        raise InvalidParameter("the query and every item must be of the same kind: all text "
                               "or all token ids", param="items")
    if kind == "text":
        prompts = [_text_prompt(tokenizer, policy, request, item.text) for item in request.items]
    else:
        check_token_ids(request.query.tokens.ids, policy.vocab_size, "query")
        query = list(request.query.tokens.ids)
        prompts = []
        for item in request.items:
            check_token_ids(item.tokens.ids, policy.vocab_size, "items")
            ids = list(item.tokens.ids)
            prompts.append(ids + query if request.item_first else query + ids)
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise InvalidParameter(f"items[{index}]: the prompt has no tokens", param="items")
        if len(prompt) > policy.max_model_len:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {policy.max_model_len} tokens; the "
                f"prompt of items[{index}] has {len(prompt)} tokens. Please shorten the query "
                "or the item.", param="items",
                metadata={"max_model_len": str(policy.max_model_len),
                          "prompt_tokens": str(len(prompt))})
    return prompts


def _text_prompt(tokenizer: Tokenizer, policy: PromptPolicy, request: pb.ScoreRequest,
                 item: str) -> list[int]:
    text = item + request.query.text if request.item_first else request.query.text + item
    if len(text) > policy.max_prompt_chars:  # cannot fit: refuse before tokenizing
        raise ContextLengthExceeded(
            f"This model's maximum context length is {policy.max_model_len} tokens; a prompt "
            f"of {len(text)} characters cannot fit. Please shorten the query or the item.",
            param="items", metadata={"max_model_len": str(policy.max_model_len)})
    return tokenizer.encode(text)


def shared_prefix(prompts: list[list[int]]) -> list[int]:
    """The longest token prefix common to every prompt."""
    length = 0
    for column in zip(*prompts, strict=False):
        if any(token != column[0] for token in column):
            break
        length += 1
    return prompts[0][:length]


def scores_from_logprobs(label_logprobs: tuple[float, ...], apply_softmax: bool) -> list[float]:
    values = np.asarray(label_logprobs, np.float64)
    if apply_softmax:  # log-probabilities differ from logits by one constant: same softmax
        exp = np.exp(values - values.max())
        return (exp / exp.sum()).tolist()
    return np.exp(values).tolist()


async def run_score(engine: Engine, prompts: list[list[int]], request: pb.ScoreRequest,
                    rpc_id: str) -> pb.ScoreResponse:
    """Prefill the shared prefix once, then every item in one go; scores in item order."""
    config = engine.engine_config
    labels = tuple(request.label_token_ids)
    prefix = shared_prefix(prompts)
    if len(prompts) > 1 and config.enable_prefix_cache and len(prefix) >= config.page_size:
        await prefill_all(engine, [_prefill_request(f"{rpc_id}-prefix", prefix, ())])
    requests = [_prefill_request(f"{rpc_id}-{index}", prompt, labels)
                for index, prompt in enumerate(prompts)]
    outputs = await prefill_all(engine, requests)
    num_prompt_tokens = sum(len(prompt) for prompt in prompts)
    return pb.ScoreResponse(
        items=[pb.ItemScores(scores=scores_from_logprobs(outputs[r.request_id].label_logprobs,
                                                         request.apply_softmax))
               for r in requests],
        usage=pb.Usage(prompt_tokens=num_prompt_tokens, completion_tokens=0,
                       cached_tokens=sum(o.cached_tokens for o in outputs.values())))


def _prefill_request(request_id: str, prompt: list[int], labels: tuple[int, ...]) -> Request:
    return Request(request_id=request_id, prompt_token_ids=prompt, sampling=GREEDY,
                   stopping=StoppingParams(max_tokens=1), score_label_ids=labels)


async def prefill_all(engine: Engine, requests: list[Request]) -> dict[str, RequestOutput]:
    """Run prefill-only requests to completion, at most `max_num_seqs` in the engine at a time
    (a big Score never fills the admission queue: other RPCs keep their room, and it is never
    half-admitted); whatever is unfinished when this is cancelled (the RPC went away) or fails
    is aborted, so its pages come back within one step."""
    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
    window = max(1, engine.engine_config.max_num_seqs)
    waiting = list(reversed(requests))  # popped from the end: request order
    unfinished: set[str] = set()
    results: dict[str, RequestOutput] = {}

    def sink(output: RequestOutput) -> None:  # called on the engine thread
        loop.call_soon_threadsafe(outputs.put_nowait, output)

    try:
        while waiting or unfinished:
            while waiting and len(unfinished) < window:  # Overloaded / Unavailable: raised
                request = waiting.pop()
                engine.add_request(request, sink)
                unfinished.add(request.request_id)
            output = await outputs.get()
            if output.error:
                raise TandemError(output.error)
            if output.finish_reason is not None:
                unfinished.discard(output.request_id)
                results[output.request_id] = output
    finally:
        for request_id in unfinished:
            engine.abort(request_id)
    return results
