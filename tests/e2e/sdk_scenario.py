"""A compact client scenario against a running Tandem facade with whichever `openai` SDK
`import openai` finds — run by tests/e2e/test_sdk_versions.py in a subprocess, once with the oldest
supported SDK (PYTHONPATH) and once with the newest (the test venv's).

Usage: python tests/e2e/sdk_scenario.py BASE_URL   (BASE_URL without /v1)

Only the standard library and `openai` are imported, so that the SDK's own dependencies (an
older httpx, anyio, pydantic) can shadow the venv's. Written against the 1.0.0 API: everything
newer SDKs have as typed parameters (`stream_options`, vLLM extras) goes through `extra_body`,
and fields the old types lack (`usage` on chunks, `prompt_tokens_details`) are read as extras.
On success the last line of stdout is JSON: {"version", "file", "checks"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

import openai

CHECKS: list[str] = []


def check(name: str, condition: bool, detail: object = "") -> None:
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    CHECKS.append(name)


def field(obj, name: str):
    """`obj.name` whether the SDK types it (an attribute) or keeps it as an extra (a dict)."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    value = getattr(obj, name, None)
    if value is None:
        extra = getattr(obj, "model_extra", None) or {}
        value = extra.get(name)
    return value


def error_body(exc: openai.APIStatusError) -> dict:
    """The error object. 1.0.0 keeps no `body` on the exception (read the response instead);
    early 1.x keep the whole `{"error": {...}}` body; later SDKs unwrap it."""
    body = getattr(exc, "body", None)
    if not isinstance(body, dict):
        body = exc.response.json()
    return body.get("error", body)


def sync_part(base: str, model: str, salt: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    models = [m.id for m in client.models.list().data]
    # the generative model, the embedding model, the reranker (conftest's `server`)
    check("models.list", models[0] == model and len(models) == 3, models)
    embedding_part(client, models[1])
    score_part(client, model)

    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello in three languages."}]
    common = dict(model=model, messages=messages, max_tokens=8, temperature=0)
    full = client.chat.completions.create(**common, extra_body={"ignore_eos": True})
    choice = full.choices[0]
    check("chat", choice.message.role == "assistant" and choice.finish_reason == "length",
          choice)
    usage = full.usage
    check("chat usage", usage.completion_tokens == 8
          and usage.total_tokens == usage.prompt_tokens + 8, usage)

    stream = client.chat.completions.create(
        **common, stream=True,
        extra_body={"ignore_eos": True, "stream_options": {"include_usage": True}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check("chat stream = non-stream", text == choice.message.content,
          (text, choice.message.content))
    check("chat stream role", chunks[0].choices[0].delta.role == "assistant")
    check("chat stream finish", [c.choices[0].finish_reason for c in chunks if c.choices][-1]
          == "length")
    last_usage = field(chunks[-1], "usage")
    check("chat stream usage chunk", chunks[-1].choices == []
          and field(last_usage, "completion_tokens") == 8
          and field(last_usage, "prompt_tokens") == usage.prompt_tokens, chunks[-1])

    completion = client.completions.create(model=model, prompt="The quick brown fox",
                                           max_tokens=5, temperature=0,
                                           extra_body={"ignore_eos": True})
    check("completions", completion.usage.completion_tokens == 5
          and completion.choices[0].finish_reason == "length", completion)
    pieces = list(client.completions.create(model=model, prompt="The quick brown fox",
                                            max_tokens=5, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    check("completions stream = non-stream",
          "".join(c.choices[0].text for c in pieces if c.choices) == completion.choices[0].text)

    try:
        client.chat.completions.create(model=model, messages=messages, temperature=3)
    except openai.BadRequestError as exc:
        check("BadRequestError", exc.status_code == 400
              and error_body(exc).get("param") == "temperature", error_body(exc))
        check("error x-request-id", bool(exc.response.headers.get("x-request-id")))
    else:
        check("BadRequestError", False, "no error raised")
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
    except openai.NotFoundError as exc:
        check("NotFoundError", error_body(exc).get("code") == "model_not_found", error_body(exc))
    else:
        check("NotFoundError", False, "no error raised")

    turn = [{"role": "system", "content": "You are terse and talk about caches a lot."},
            {"role": "user", "content": "Tell me about prefix caching in two sentences."}]
    first = client.chat.completions.create(model=model, messages=turn, max_tokens=6,
                                           temperature=0, extra_body={"cache_salt": salt})
    check("cached_tokens first turn",
          field(field(first.usage, "prompt_tokens_details"), "cached_tokens") == 0, first.usage)
    second = client.chat.completions.create(
        model=model, max_tokens=2, temperature=0, extra_body={"cache_salt": salt},
        messages=turn + [{"role": "assistant", "content": first.choices[0].message.content},
                         {"role": "user", "content": "Shorter?"}])
    cached = field(field(second.usage, "prompt_tokens_details"), "cached_tokens")
    check("cached_tokens second turn",
          isinstance(cached, int) and first.usage.prompt_tokens // 16 * 16 <= cached
          < second.usage.prompt_tokens, second.usage)

    raw = client.chat.completions.with_raw_response.create(
        **common, user="u-1", extra_headers={"x-request-id": f"sdk-{salt}"},
        extra_body={"ignore_eos": True, "top_k": 5})
    check("with_raw_response x-request-id", raw.headers.get("x-request-id") == f"sdk-{salt}",
          dict(raw.headers))
    check("with_raw_response ignored params", raw.headers.get("x-tandem-ignored-params") == "user",
          dict(raw.headers))
    check("with_raw_response parse", raw.parse().choices[0].message.content
          == choice.message.content)


async def async_part(base: str, model: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0,
                                timeout=60)

    async def streamed(prompt: str) -> str:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=6,
            temperature=0, stream=True, extra_body={"ignore_eos": True})
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def whole(prompt: str) -> str:
        result = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=6,
            temperature=0, extra_body={"ignore_eos": True})
        return result.choices[0].message.content

    prompts = ["alpha", "beta gamma", "delta epsilon zeta"]
    together = await asyncio.gather(*(streamed(p) for p in prompts))
    check("async concurrent streams = non-stream", list(together)
          == [await whole(p) for p in prompts], together)

    completion = await client.completions.create(model=model, prompt="hello", max_tokens=2,
                                                 extra_body={"ignore_eos": True})
    check("async completions", completion.choices[0].finish_reason == "length")
    raw = await client.completions.with_raw_response.create(
        model=model, prompt="hello", max_tokens=2, extra_headers={"x-request-id": "async-rid"},
        extra_body={"ignore_eos": True})
    check("async with_raw_response x-request-id", raw.headers.get("x-request-id") == "async-rid")
    try:
        await client.completions.create(model=model, prompt="word " * 1100, max_tokens=4)
    except openai.BadRequestError as exc:
        check("async BadRequestError",
              error_body(exc).get("code") == "context_length_exceeded", error_body(exc))
    else:
        check("async BadRequestError", False, "no error raised")


def embedding_part(client: openai.OpenAI, embedding_model: str) -> None:
    """Embeddings as floats and as base64 (which newer SDKs request and decode themselves)."""
    import base64
    import struct

    as_float = client.embeddings.create(model=embedding_model, input=["a cat", "a dog"],
                                        encoding_format="float")
    vectors = [item.embedding for item in as_float.data]
    check("embeddings float", len(vectors) == 2 and len(vectors[0]) == 384
          and abs(sum(v * v for v in vectors[0]) - 1) < 1e-4, len(vectors))
    as_base64 = client.embeddings.create(model=embedding_model, input=["a cat", "a dog"],
                                         encoding_format="base64")
    for item, vector in zip(as_base64.data, vectors, strict=True):
        value = item.embedding
        if isinstance(value, str):  # SDKs that hand base64 back as it came
            value = list(struct.unpack(f"<{len(vector)}f", base64.b64decode(value)))
        check("embeddings base64", value == vector)
    short = client.embeddings.create(model=embedding_model, input="hi", encoding_format="float",
                                     extra_body={"dimensions": 16})  # typed only since 1.10
    check("embeddings dimensions", len(short.data[0].embedding) == 16)


def score_part(client: openai.OpenAI, model: str) -> None:
    """SGLang's /v1/score through the SDK's generic post (seed 000)."""
    body = {"model": model, "query": "The capital of France is", "items": [" Paris", " London"],
            "label_token_ids": [5, 6, 7], "apply_softmax": True}
    try:
        reply = client.post("/score", cast_to=dict, body=body)
    except ValueError:  # openai 1.0.0 cannot cast to a bare `dict` (an SDK bug, fixed later)
        reply = client.post("/score", cast_to=dict[str, Any], body=body)
    check("score", reply["object"] == "scoring" and len(reply["scores"]) == 2
          and all(abs(sum(scores) - 1) < 1e-6 for scores in reply["scores"]), reply)
    try:
        client.post("/score", cast_to=dict[str, Any], body={
            "model": model, "query": "Test", "items": [], "label_token_ids": [5]})
    except openai.BadRequestError as exc:
        check("score BadRequestError", error_body(exc).get("param") == "items", error_body(exc))
    else:
        check("score BadRequestError", False, "no error raised")


def main() -> None:
    base = sys.argv[1]
    model = openai.OpenAI(base_url=f"{base}/v1", api_key="unused").models.list().data[0].id
    salt = f"{openai.__version__}-{uuid.uuid4().hex[:8]}"
    sync_part(base, model, salt)
    asyncio.run(async_part(base, model))
    print(json.dumps({"version": openai.__version__, "file": openai.__file__, "checks": CHECKS}))


if __name__ == "__main__":
    main()
