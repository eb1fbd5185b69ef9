"""Score on the real engine and a tiny Llama, against Hugging Face transformers (PyTorch)
computing the same prompts' next-token distributions."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from core.config import EngineConfig
from core.errors import ContextLengthExceeded, InvalidParameter
from core.service.convert import PromptPolicy
from core.service.score import run_score, score_prompts
from tandem.v1 import inference_pb2 as pb

torch = pytest.importorskip("torch")

QUERY = ("The quick brown fox jumps over the lazy dog. A language model reads text as tokens "
         "and predicts the next token, one step at a time.")
ITEMS = [" Paris", " London is big", " Berlin", " 日本語 🙂", " option<1> \"2\" '3'"]
LABELS = [5, 17, 42, 100, 311]


@pytest.fixture(scope="module")
def engine(tiny_models):
    from core.engine.startup import create_engine

    engine = create_engine(tiny_models["llama"], EngineConfig(
        max_model_len=256, max_num_seqs=8, max_num_batched_tokens=128))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def reference(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()

    def next_token_logprobs(prompt: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.tensor([prompt])).logits[0, -1]
        return torch.log_softmax(logits.double(), dim=-1).numpy()

    return next_token_logprobs


def policy_of(engine) -> PromptPolicy:
    return PromptPolicy(vocab_size=engine.model_config.vocab_size,
                        max_model_len=engine.engine_config.max_model_len,
                        max_token_chars=engine.tokenizer.max_token_chars)


def score(engine, request: pb.ScoreRequest) -> tuple[list[list[int]], pb.ScoreResponse]:
    prompts = score_prompts(engine.tokenizer, policy_of(engine), request)
    return prompts, asyncio.run(run_score(engine, prompts, request, "test"))


def text_request(**fields) -> pb.ScoreRequest:
    return pb.ScoreRequest(query=pb.ScoreInput(text=QUERY),
                           items=[pb.ScoreInput(text=item) for item in ITEMS],
                           label_token_ids=LABELS, **fields)


@pytest.mark.parametrize("item_first", [False, True])
@pytest.mark.parametrize("apply_softmax", [False, True])
def test_text_scores_match_transformers(engine, reference, item_first, apply_softmax):
    prompts, response = score(engine, text_request(item_first=item_first,
                                                   apply_softmax=apply_softmax))
    assert len(response.items) == len(ITEMS)
    for prompt, item in zip(prompts, response.items, strict=True):
        expected = reference(prompt)[LABELS]
        ours = np.asarray(item.scores, np.float64)
        if apply_softmax:  # the softmax over the labels' logits
            expected = np.exp(expected - expected.max())
            expected /= expected.sum()
            assert abs(ours.sum() - 1.0) < 1e-6
            np.testing.assert_allclose(ours, expected, atol=1e-5)
        else:  # the labels' probabilities under the full distribution (tiny: compare logs)
            np.testing.assert_allclose(np.log(ours), expected, atol=1e-4)
    # the prompts really are query+item (or item+query) as text, tokenized together
    first = engine.tokenizer.encode(ITEMS[0] + QUERY if item_first else QUERY + ITEMS[0])
    assert prompts[0] == first


@pytest.mark.parametrize("item_first", [False, True])
def test_token_input_matches_transformers(engine, reference, item_first):
    rng = np.random.RandomState(3)
    query = rng.randint(5, 500, size=40).tolist()
    items = [rng.randint(5, 500, size=n).tolist() for n in (1, 3, 7, 12)]
    request = pb.ScoreRequest(query=pb.ScoreInput(tokens=pb.TokenIds(ids=query)),
                              items=[pb.ScoreInput(tokens=pb.TokenIds(ids=i)) for i in items],
                              label_token_ids=LABELS, item_first=item_first)
    prompts, response = score(engine, request)
    for item, prompt, result in zip(items, prompts, response.items, strict=True):
        assert prompt == (item + query if item_first else query + item)
        np.testing.assert_allclose(np.log(np.asarray(result.scores, np.float64)),
                                   reference(prompt)[LABELS], atol=1e-4)
    assert response.usage.prompt_tokens == sum(len(p) for p in prompts)
    assert response.usage.completion_tokens == 0


def test_query_is_computed_once_and_items_branch_from_it(engine):
    """20 items after a 40-token query: the shared prefix is prefilled once, and every item
    reuses its two whole pages (32 tokens) from the prefix cache; nothing leaks."""
    baseline = engine.scheduler.allocator.num_in_use
    query = list(range(10, 50))
    items = [[100 + i, 200 + i] for i in range(20)]
    request = pb.ScoreRequest(query=pb.ScoreInput(tokens=pb.TokenIds(ids=query)),
                              items=[pb.ScoreInput(tokens=pb.TokenIds(ids=i)) for i in items],
                              label_token_ids=LABELS, apply_softmax=True)
    _, response = score(engine, request)
    assert len(response.items) == 20
    assert response.usage.cached_tokens == 20 * 32
    assert engine.scheduler.allocator.num_in_use == baseline
    assert engine.compilations_after_warmup == 0


@pytest.mark.parametrize(("fields", "param"), [
    ({"items": []}, "items"),
    ({"label_token_ids": []}, "label_token_ids"),
    ({"label_token_ids": [10**6]}, "label_token_ids"),
    ({"items": [pb.ScoreInput(tokens=pb.TokenIds(ids=[1, 2]))]}, "items"),
    ({"query": pb.ScoreInput()}, "query"),
    ({"label_token_ids": [5] * 1025}, "label_token_ids"),
])
def test_bad_requests_name_the_parameter(engine, fields, param):
    request = text_request()
    for name, value in fields.items():
        request.ClearField(name)
        if isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            getattr(request, name).CopyFrom(value)
    with pytest.raises(InvalidParameter) as error:
        score_prompts(engine.tokenizer, policy_of(engine), request)
    assert error.value.param == param


def test_over_long_prompt_is_refused(engine):
    request = pb.ScoreRequest(query=pb.ScoreInput(tokens=pb.TokenIds(ids=[7] * 250)),
                              items=[pb.ScoreInput(tokens=pb.TokenIds(ids=[8] * 10))],
                              label_token_ids=LABELS)
    with pytest.raises(ContextLengthExceeded) as error:
        score_prompts(engine.tokenizer, policy_of(engine), request)
    assert error.value.param == "items"


def test_more_items_than_the_admission_queue_holds(engine):
    """300 items > max_waiting + max_num_seqs (264): they enter the engine max_num_seqs at a
    time, so a big Score neither fails nor crowds other requests out of the queue."""
    query = list(range(10, 30))
    request = pb.ScoreRequest(query=pb.ScoreInput(tokens=pb.TokenIds(ids=query)),
                              items=[pb.ScoreInput(tokens=pb.TokenIds(ids=[5 + i % 400]))
                                     for i in range(300)], label_token_ids=LABELS)
    _, response = score(engine, request)
    assert len(response.items) == 300
    assert engine.num_unfinished == 0 and engine.scheduler.allocator.num_in_use == 0
