"""The official openai SDK, sync and async, streaming and not, against the facade + core double."""

from __future__ import annotations

import openai
import pytest

USER = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def client(facade_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{facade_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def async_client(facade_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{facade_url}/v1", api_key="unused", max_retries=0)


def test_chat_non_streaming(client):
    completion = client.chat.completions.create(model="tiny-demo", messages=USER, n=2, max_tokens=3)
    assert completion.object == "chat.completion" and completion.model == "tiny-demo"
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "the quick brown"
    assert completion.choices[0].finish_reason == "length"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 6, 10)
    assert usage.prompt_tokens_details.cached_tokens == 2


def test_chat_logprobs(client):
    completion = client.chat.completions.create(
        model="tiny-demo", messages=USER, logprobs=True, top_logprobs=2
    )
    content = completion.choices[0].logprobs.content
    assert len(content) == 4 and content[0].token == "token_id:100"
    assert len(content[0].top_logprobs) == 2


def test_chat_streaming(client):
    stream = client.chat.completions.create(
        model="tiny-demo", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "the quick brown fox"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 2


def test_chat_stream_error_raises_in_sdk(client):
    stream = client.chat.completions.create(model="midstream", messages=USER, stream=True)
    with pytest.raises(openai.APIError, match="engine exploded"):
        list(stream)


def test_sdk_status_errors(client):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="missing", messages=USER)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="overloaded", messages=USER)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-demo", messages=USER, temperature=3)
    assert bad.value.param == "temperature"


def test_completions_several_prompts(client):
    completion = client.completions.create(
        model="tiny-demo", prompt=["one two", "three four five"], n=2, max_tokens=5
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    assert [choice.text for choice in completion.choices] == [
        "one two", "one two", "three four five", "three four five"
    ]  # fmt: skip
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 2 * 2 + 3 * 2


def test_completions_tokens_echo_and_stream(client):
    completion = client.completions.create(model="tiny-demo", prompt=[7, 8], echo=True)
    assert completion.choices[0].text == "t7 t8t7 t8"
    stream = client.completions.create(
        model="tiny-demo", prompt=["a b", "c"], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "a b", 1: "c"}
    assert chunks[-1].usage.total_tokens == 3 + 3


def test_models(client):
    ids = [model.id for model in client.models.list()]
    assert ids == ["tiny-demo", "org/other-model"]
    assert client.models.retrieve("tiny-demo").owned_by == "tandem"


async def test_async_chat_non_streaming(async_client):
    completion = await async_client.chat.completions.create(model="tiny-demo", messages=USER)
    assert completion.choices[0].message.content == "the quick brown fox"


async def test_async_chat_streaming(async_client):
    stream = await async_client.chat.completions.create(
        model="tiny-demo", messages=USER, stream=True, n=2
    )
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert texts == {0: "the quick brown fox", 1: "the quick brown fox"}
    assert finished == {0: "stop", 1: "stop"}


async def test_async_error(async_client):
    with pytest.raises(openai.NotFoundError):
        await async_client.chat.completions.create(model="missing", messages=USER)


def test_each_prompt_call_gets_its_own_request_id(client, fake_core):
    client.completions.create(
        model="tiny-demo", prompt=["a", "b"], extra_headers={"x-request-id": "multi-1"}
    )
    assert {"multi-1-p0", "multi-1-p1"} <= set(fake_core.request_ids())
