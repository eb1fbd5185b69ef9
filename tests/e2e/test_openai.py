"""End to end: `tandem serve` (a real core process + a real uvicorn facade) driven by the
official `openai` SDK — sync and async, streaming and not, chat and completions."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tandem.v1 import inference_pb2 as pb
from tests.conftest import MODEL, RERANK_MODEL, SERVER_MAX_MODEL_LEN


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def async_client(server):
    return openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello in three languages."}]


def test_models_lists_the_served_model(client):
    # the generative model first, then the bundled embedding model and the reranker
    assert [m.id for m in client.models.list().data] == [MODEL, "all-MiniLM-L6-v2",
                                                         RERANK_MODEL]


def test_chat_non_streaming_and_streaming_agree(client, server):
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16,
                                          temperature=0, extra_body={"ignore_eos": True})
    choice = full.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    chat = pb.ChatInput(messages=[pb.ChatMessage(role=m["role"], content=[pb.ContentPart(
        text=m["content"])]) for m in MESSAGES])
    assert full.usage.prompt_tokens == server.count_tokens(chat=chat)
    assert full.usage.completion_tokens == 16
    assert full.usage.total_tokens == full.usage.prompt_tokens + 16
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_usage_counts_match_the_core_tokenizer(client, server):
    result = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=5,
                                       temperature=0, extra_body={"ignore_eos": True})
    assert result.usage.completion_tokens == 5 and result.choices[0].finish_reason == "length"
    assert result.usage.prompt_tokens == server.count_tokens(text="The quick brown fox")


def test_stop_strings_are_honoured_when_streaming(client):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0,
                  extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[6:9]
    assert len(stop) == 3 and full.find(stop) == 6
    chunks = list(client.completions.create(**kwargs, stop=[stop], stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full[:6]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    unstreamed = client.completions.create(**kwargs, stop=[stop]).choices[0]
    assert unstreamed.text == full[:6] and unstreamed.finish_reason == "stop"


def test_a_stream_of_tokens_that_add_no_text_yet_joins_to_the_whole_text(client, tiny_models):
    # a lone UTF-8 lead byte (byte-level BPE's "ð" is 0xF0) decodes to no text until the
    # character completes: the chunks before the last carry tokens but no text (how many
    # there are depends on how the core's outputs coalesce; the facade's rule, one chunk per
    # core response with tokens, is tests/facade/test_completion_chunks.py's), and the text
    # comes out whole at the end
    from transformers import AutoTokenizer

    lead_byte = AutoTokenizer.from_pretrained(tiny_models["llama"]).convert_tokens_to_ids("ð")
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0,
                  logit_bias={str(lead_byte): 100}, extra_body={"ignore_eos": True})
    chunks = [c for c in client.completions.create(**kwargs, stream=True) if c.choices]
    assert [c.choices[0].text for c in chunks[:-1]] == [""] * (len(chunks) - 1)
    assert chunks[-1].choices[0].finish_reason == "length"
    whole = client.completions.create(**kwargs).choices[0].text
    assert chunks[-1].choices[0].text == whole and whole


async def test_async_client_streams_concurrently(async_client):
    import asyncio

    async def one(prompt: str) -> str:
        stream = await async_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8,
            temperature=0, stream=True, extra_body={"ignore_eos": True})
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def alone(prompt: str) -> str:
        result = await async_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=8,
            temperature=0, extra_body={"ignore_eos": True})
        return result.choices[0].message.content

    prompts = ["alpha", "beta gamma", "delta epsilon zeta", "eta"]
    together = await asyncio.gather(*(one(p) for p in prompts))
    assert together == [await alone(p) for p in prompts]


def test_errors_come_back_as_openai_errors(client, server):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=3)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.body["code"] == "model_not_found"
    assert missing.value.response.headers["x-request-id"]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="word " * 1100, max_tokens=4)
    assert too_long.value.body["code"] == "context_length_exceeded"
    response = httpx.post(f"{server.base}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json", "x-request-id": "rid-1"})
    assert response.status_code == 400 and response.headers["x-request-id"] == "rid-1"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_n_choices_and_logprobs(client):
    result = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, n=2, temperature=1.0, seed=11,
        logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    assert [c.index for c in result.choices] == [0, 1]
    assert result.usage.completion_tokens == 12
    for choice in result.choices:
        content = choice.logprobs.content
        assert len(content) == 6 and all(len(entry.top_logprobs) == 2 for entry in content)
        joined = b"".join(bytes(entry.bytes) for entry in content)
        text = joined.decode("utf-8", errors="replace")  # special tokens are not in the content
        assert re.sub(r"<\|[a-z_]+\|>", "", text) == choice.message.content
    again = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, n=2, temperature=1.0, seed=11,
        extra_body={"ignore_eos": True})
    assert [c.message.content for c in again.choices] == [c.message.content
                                                          for c in result.choices]


def test_second_turn_reports_the_first_turn_as_cached_tokens(client):
    """Multi-turn chat: the second request's prompt starts with the first turn, whose KV pages
    the core's prefix cache kept (usage.prompt_tokens_details.cached_tokens)."""
    turn = [{"role": "system", "content": "You are terse and talk about caches a lot."},
            {"role": "user", "content": "Tell me about prefix caching in two sentences."}]
    first = client.chat.completions.create(model=MODEL, messages=turn, max_tokens=12,
                                           temperature=0, extra_body={"cache_salt": "multi"})
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second_turn = turn + [{"role": "assistant", "content": first.choices[0].message.content},
                          {"role": "user", "content": "And once more, shorter?"}]
    second = client.chat.completions.create(model=MODEL, messages=second_turn, max_tokens=4,
                                            temperature=0, extra_body={"cache_salt": "multi"})
    cached = second.usage.prompt_tokens_details.cached_tokens
    page_size = 16
    assert cached >= first.usage.prompt_tokens // page_size * page_size
    assert cached < second.usage.prompt_tokens


def test_core_metrics_endpoint_speaks_prometheus(server, client):
    client.completions.create(model=MODEL, prompt="metrics please", max_tokens=3)
    body = httpx.get(server.metrics_url, timeout=5).text
    for name in ("tandem:num_requests_waiting", "tandem:num_requests_running",
                 "tandem:kv_cache_usage_perc", "tandem:prefix_cache_queries_total",
                 "tandem:prefix_cache_hits_total", "tandem:time_to_first_token_seconds_bucket",
                 "tandem:inter_token_latency_seconds_bucket", "tandem:num_preemptions_total",
                 "tandem:compilations_after_warmup"):
        assert name in body, name
    assert re.search(r"^tandem:compilations_after_warmup 0\.0$", body, re.M)
    generated = re.search(r"^tandem:generation_tokens_total (\S+)$", body, re.M)
    assert generated and float(generated.group(1)) >= 3


@pytest.mark.parametrize("backend", ["grpc", "http"])
async def test_the_serving_benchmark_drives_the_real_server(server, backend):
    """scripts/bench_serving.py against the real core (gRPC) and facade (HTTP): every request
    completes with all its tokens, and the vLLM-style metrics come out consistent."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from bench_prompts import make_prompts
    from bench_serving import run_benchmark

    prompts = make_prompts(num_prompts=4, prompt_len=24, seed=3, vocab_limit=500)
    target = server.grpc_target if backend == "grpc" else f"{server.base}/v1"
    metrics = await run_benchmark(backend, target, prompts, output_len=6, model=MODEL)
    assert metrics["completed"] == 4 and metrics["failed"] == 0
    assert metrics["total_output_tokens"] == 24
    assert 0 < metrics["median_ttft_ms"] <= metrics["median_e2el_ms"]
    assert metrics["output_throughput_tok_s"] > 0


def test_request_contract_through_the_sdk(client):
    """Ignored fields come back in x-tandem-ignored-params; vLLM extras ride in extra_body;
    neutral penalties pass; developer messages reach the real chat template."""
    messages = [{"role": "developer", "content": "Be terse."}, MESSAGES[1]]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_completion_tokens=3, temperature=0, user="u-1",
        store=False, metadata={"team": "a"}, presence_penalty=0, frequency_penalty=0,
        extra_body={"ignore_eos": True, "top_k": 5, "repetition_penalty": 1.0, "priority": 2})
    assert raw.headers["x-tandem-ignored-params"] == "metadata, store, user"
    assert raw.parse().usage.completion_tokens == 3
    raw_stream = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=2, stream=True, user="u-1",
        extra_body={"ignore_eos": True})
    assert raw_stream.headers["x-tandem-ignored-params"] == "user"
    assert [c.choices[0].finish_reason for c in raw_stream.parse() if c.choices][-1] == "length"


def test_out_of_range_and_unsupported_values_are_bad_requests(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                       extra_body={"top_k": -2})
    assert bad.value.body["param"] == "top_k"
    with pytest.raises(openai.BadRequestError) as refused:  # the core checks the vocabulary
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2,
                                       presence_penalty=0.5, logit_bias={"1000000": 1})
    assert refused.value.body["param"] == "logit_bias"
    image = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]
    with pytest.raises(openai.BadRequestError) as multimodal:
        client.chat.completions.create(model=MODEL,
                                       messages=[{"role": "user", "content": image}])
    assert multimodal.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="word " * (SERVER_MAX_MODEL_LEN + 50),
                                  max_tokens=4)
    message = too_long.value.body["message"]
    assert f"maximum context length is {SERVER_MAX_MODEL_LEN} tokens" in message
    assert "in the prompt" in message


async def test_async_sdk_continuous_usage_and_raw_headers(async_client):
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True, "min_p": 0.0})
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is not None for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].usage.completion_tokens == 0 and chunks[-1].usage.completion_tokens == 3
    raw = await async_client.completions.with_raw_response.create(
        model=MODEL, prompt="hello", max_tokens=2, user="u",
        extra_body={"ignore_eos": True, "spaces_between_special_tokens": True})
    assert raw.headers["x-tandem-ignored-params"] == "spaces_between_special_tokens, user"
    assert raw.parse().choices[0].finish_reason == "length"
