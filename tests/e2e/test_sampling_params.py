"""Sampling parameters end to end: the official `openai` SDK against the real `tandem serve`
(session `server` fixture), checked against Hugging Face transformers on the same checkpoint —
penalties and logit_bias give the reference's greedy tokens, echo + logprobs and
prompt_logprobs give HF's log-softmax (cold and with the prefix cache warm), best_of returns
the candidate of highest cumulative logprob, bad parameters are 400s naming the parameter."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import openai
import pytest

from core.engine.request import SamplingParams
from tests.conftest import MODEL
from tests.core.engine.test_logits_stages import PROMPT, hf_logits, reference_greedy

torch = pytest.importorskip("torch")

GREEDY = SamplingParams(temperature=0.0, seed=1)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def hf_model(tiny_models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"],
                                                dtype=torch.float32).eval()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def completion_ids(client, **kwargs) -> list[int]:
    response = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0,
        extra_body={"ignore_eos": True, **kwargs.pop("extra", {})},
        logprobs=0, **kwargs)
    tokens = response.choices[0].logprobs.tokens
    assert len(tokens) == 8
    return response


def test_penalties_and_logit_bias_give_the_reference_greedy_tokens(client, hf_model,
                                                                  tiny_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    params = replace(GREEDY, presence_penalty=0.8, frequency_penalty=0.6,
                     repetition_penalty=1.4, logit_bias=((33, 2.5), (87, -3.0)))
    expected = reference_greedy(hf_model, PROMPT, 8, params)
    response = completion_ids(client, presence_penalty=0.8, frequency_penalty=0.6,
                              logit_bias={"33": 2.5, "87": -3.0},
                              extra={"repetition_penalty": 1.4})
    def text(ids):  # what the core's incremental detokenizer gives after the prompt
        return tokenizer.decode(PROMPT + ids)[len(tokenizer.decode(PROMPT)):]

    assert response.choices[0].text == text(expected)
    plain = reference_greedy(hf_model, PROMPT, 8, GREEDY)
    assert response.choices[0].text != text(plain)
    forced = completion_ids(client, logit_bias={"123": 100})
    assert forced.choices[0].text == text([123] * 8)
    only = completion_ids(client, extra={"allowed_token_ids": [40, 41]})
    assert set(only.choices[0].logprobs.tokens) <= {tokenizer.convert_ids_to_tokens(40),
                                                    tokenizer.convert_ids_to_tokens(41)} | {
        tokenizer.decode([40]), tokenizer.decode([41])}


@pytest.mark.parametrize("attempt", ["cold", "warm"])
def test_echo_logprobs_and_prompt_logprobs_match_hf(client, hf_model, attempt):
    prompt = (PROMPT * 3)[:40]
    expected = log_softmax(hf_logits(hf_model, prompt))
    want = expected[np.arange(len(prompt) - 1), prompt[1:]]
    response = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=2)
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(prompt) and logprobs.token_logprobs[0] is None
    assert logprobs.top_logprobs[0] is None and logprobs.text_offset[0] == 0
    np.testing.assert_allclose(logprobs.token_logprobs[1:], want, atol=1e-4)
    # the 2 best alternatives, keyed by their text (two tokens may share one)
    assert all(1 <= len(top) <= 2 for top in logprobs.top_logprobs[1:])
    assert any(len(top) == 2 for top in logprobs.top_logprobs[1:])
    assert response.usage.completion_tokens == 0
    # generation after the echoed prompt, and vLLM's prompt_logprobs
    response = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, echo=True, logprobs=1, temperature=0,
        extra_body={"prompt_logprobs": 1, "ignore_eos": True})
    choice = response.choices[0]
    assert len(choice.logprobs.tokens) == len(prompt) + 3
    np.testing.assert_allclose(choice.logprobs.token_logprobs[1:len(prompt)], want, atol=1e-4)
    positions = choice.prompt_logprobs
    assert positions[0] is None and len(positions) == len(prompt)
    for index in (1, 7, 39):
        entry = positions[index][str(prompt[index])]
        assert abs(entry["logprob"] - want[index - 1]) < 1e-4


def test_best_of_returns_the_highest_cumulative_logprob(client):
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=7,
                  logprobs=0, extra_body={"ignore_eos": True})
    every = client.completions.create(n=3, **kwargs)
    sums = [sum(choice.logprobs.token_logprobs) for choice in every.choices]
    best = client.completions.create(n=1, best_of=3, **kwargs)
    assert len(best.choices) == 1
    assert best.choices[0].text == every.choices[int(np.argmax(sums))].text
    assert best.usage.completion_tokens == 18  # every candidate was generated
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(n=1, best_of=2, stream=True, **kwargs)
    assert error.value.body["param"] == "best_of"


@pytest.mark.parametrize("extra, param", [
    ({"logit_bias": {"999999": 5}}, "logit_bias"),
    ({"allowed_token_ids": []}, "allowed_token_ids"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_tokens": 9, "max_tokens": 4}, "min_tokens"),
])
def test_bad_sampling_values_are_400_naming_the_param(client, extra, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL, prompt="hello", max_tokens=4,
                                  extra_body=extra)
    assert error.value.body["param"] == param


def test_min_tokens_defers_a_stop_string_through_chat(client):
    messages = [{"role": "user", "content": "say something"}]
    kwargs = dict(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    plain = client.chat.completions.create(**kwargs, extra_body={"ignore_eos": True})
    stop = plain.choices[0].message.content.strip()[:2]
    assert stop
    stopped = client.chat.completions.create(**kwargs, stop=[stop],
                                             extra_body={"ignore_eos": True})
    assert stopped.choices[0].finish_reason == "stop"
    held = client.chat.completions.create(**kwargs, stop=[stop],
                                          extra_body={"ignore_eos": True, "min_tokens": 6})
    assert held.usage.completion_tokens >= 6 > stopped.usage.completion_tokens


def test_bad_words_are_tokenized_as_vllm_does(tiny_models):
    from core.service.convert import bad_words_token_ids
    from core.tokenizer import Tokenizer

    tokenizer = Tokenizer(tiny_models["llama"])
    sequences = bad_words_token_ids(tokenizer, ["hello", " world"])
    assert sequences[0] == tuple(tokenizer.encode("hello", add_special_tokens=False))
    assert tuple(tokenizer.encode("world", add_special_tokens=False)) in sequences
    for sequence in sequences:  # each is a plain or a space-prefixed spelling of a word
        assert tokenizer.decode(list(sequence)).strip() in ("hello", "world")
