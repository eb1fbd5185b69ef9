"""The seed documents' concrete cases, end to end: the official `openai` SDK (sync and async,
streaming and not) against a real `tandem serve` (real core + real facade), plus extra real
`tandem facade` processes pointed at that core (API keys + body limit, a tiny deadline) or at a
dead port. Also: a client disconnect aborts the request and frees the core's KV pages.

Seed case → tests. E = tests/e2e/test_openai.py (real stack, existed), F = tests/facade/ (fake
gRPC core, existed), S = this file (real stack, added).

001 temperature ∉ [0, 2], top_p ∉ (0, 1], frequency/presence_penalty ∉ [-2, 2], n < 1 → 400
    E test_errors_come_back_as_openai_errors (temperature only)
    F test_http_errors::test_bad_temperature_is_400_naming_param, ::test_completions_validation
    S test_out_of_range_values_are_bad_requests (each param, chat + completions, sync),
      test_async_out_of_range_and_streaming_bad_requests (async, streaming, the edges pass)
001 best_of < n → 400; chat best_of / echo refused unless neutral
    F test_http_errors::test_completions_validation
    S test_best_of_and_echo (sync, streaming)
001 response_format json_object / json_schema, streaming too (constrained by the core)
    S test_json_response_format_is_honoured (sync + async, streaming + not); more in
      tests/e2e/test_structured_outputs.py
001 embeddings encoding_format=base64; 004 embeddings dimensions
    tests/e2e/test_score_embed.py (real stack): base64 == float, dimensions; 000 (/v1/score)
    there too
001 vLLM extras accepted, never 422 (top_k, min_p, use_beam_search, repetition_penalty, …)
    E test_request_contract_through_the_sdk, test_async_sdk_continuous_usage_and_raw_headers
    F test_request_contract::test_vllm_extras_reach_the_core, ::test_neutral_values_…
    S test_vllm_extras_are_accepted (sync + async, streaming + not)
001 stop_reason on choices
    S test_stop_reason_on_choices (stop string and length, streaming + not)
002 official client works unchanged with base_url: sync + async, streaming + not
    E test_chat_non_streaming_and_streaming_agree, test_async_client_streams_concurrently,
      test_completions_usage_counts_match_the_core_tokenizer, test_stop_strings_are_honoured_…
    F test_openai_sdk::* (sync, async, streaming, errors)
    S test_async_completions_streaming_and_not
004 unknown fields tolerated (named in x-tandem-ignored-params)
    F test_http_errors::test_unknown_fields_are_accepted, test_request_contract::test_ignored_…
    S test_unknown_fields_are_tolerated_and_named
004 roles developer / function / tool, tool_call_id, assistant tool_calls, content as parts
    E test_request_contract_through_the_sdk (developer), test_out_of_range_and_unsupported_…
      (image part refused)
    F test_request_contract::test_every_role_and_parts, test_convert::test_text_parts_…
    S test_every_role_and_content_parts (sync, async streaming; parts == the joined string)
004 tools / tool_choice / logprobs / seed / stream_options / response_format text / user …
    E test_n_choices_and_logprobs, test_async_sdk_continuous_usage_and_raw_headers
    F test_convert::test_tools_and_tool_choice_go_to_the_core_and_empty_tools_are_refused
    S tests/e2e/test_tools_clients.py (required / named calls, LangChain, Instructor, Agents SDK)
    S test_gateway_request_fields_are_accepted (streaming + not)
004 x-request-id on every response and error (SDK `_request_id`, `APIStatusError.request_id`)
    E test_errors_come_back_as_openai_errors
    F test_http_errors::test_incoming_request_id_is_echoed_and_reaches_the_core
    S test_request_id_on_responses_streams_and_errors, test_async_request_id_is_echoed
004 401 → AuthenticationError with `WWW-Authenticate: Bearer`
    F test_http_errors::test_api_keys_are_enforced_per_route, test_observability::test_key_…
    S test_missing_or_wrong_key_is_401_bearer (sync, streaming, no key),
      test_async_missing_key_is_401_bearer
DESIGN client disconnect → the core frees the request's pages
    F test_streaming::test_client_disconnect_cancels_the_core_call
    S test_disconnect_aborts_the_request_and_frees_its_pages
DESIGN core unreachable → 503 + x-should-retry: true
    F test_http_errors::test_core_unreachable_is_503_should_retry
    S test_dead_core_is_503_should_retry (sync + async, streaming + not)
DESIGN deadline → 504 (an error event after the first byte)
    F test_limits::test_deadline_is_504, ::test_deadline_mid_stream_is_an_error_event
    S test_deadline_is_504_and_frees_the_pages
DESIGN overload → 429 + Retry-After ≤ 120
    F test_http_errors::test_overloaded_is_429_with_retry_after, ::test_overloaded_stream_…,
      test_errors::test_retry_after_rounded_up_and_capped (no real-stack test: needs a 2nd core)
DESIGN body over TANDEM_MAX_BODY_BYTES → 413
    F test_limits::test_declared_body_too_large_is_413_envelope, ::test_chunked_body_…
    S test_body_over_the_limit_is_413
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (  # `server`: conftest session fixture
    MODEL,
    free_port,
    retry_on_taken_port,
    stop_process,
    wait_for_http,
)

ROOT = Path(__file__).resolve().parents[2]
API_KEYS = ("seed-key-1", "seed-key-2")
BODY_LIMIT_BYTES = 4096
DEADLINE_S = 0.05  # far less than 880 tokens take on any CPU (~1 s at best)
USER = [{"role": "user", "content": "Say hello."}]


# ---------------------------------------------------------------------------------------------
# fixtures: extra facade processes in front of the module's real core


@dataclass(frozen=True)
class Facades:
    keyed: str  # TANDEM_API_KEYS + TANDEM_MAX_BODY_BYTES, real core
    hurried: str  # TANDEM_REQUEST_TIMEOUT_S = DEADLINE_S, real core
    dead: str  # pointed at a port nothing listens on


def _start_facade(core: str, env: dict[str, str], log_dir: Path, name: str):
    """A `tandem facade` process on a free port (a new one if it was taken before the bind)."""
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_API_KEYS")}

    def start() -> tuple[str, subprocess.Popen]:
        port = free_port()
        log_path = log_dir / f"{name}-{port}.log"
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "core.cli", "facade", "--core", core, "--port", str(port)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**clean_env, "TANDEM_LOG_LEVEL": "WARNING", **env})
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{base}/health", process, log_path)
        except BaseException:
            stop_process(process)
            raise
        return base, process

    return retry_on_taken_port(start)


@pytest.fixture(scope="module")
def facades(server, tmp_path_factory):  # noqa: F811
    """Three `tandem facade` processes (no JAX: about a second each)."""
    logs = tmp_path_factory.mktemp("facades")
    dead_core = f"127.0.0.1:{free_port()}"
    specs = {
        "keyed": (server.grpc_target, {"TANDEM_API_KEYS": ",".join(API_KEYS),
                                       "TANDEM_MAX_BODY_BYTES": str(BODY_LIMIT_BYTES)}),
        "hurried": (server.grpc_target, {"TANDEM_REQUEST_TIMEOUT_S": str(DEADLINE_S)}),
        "dead": (dead_core, {}),
    }
    started: dict[str, tuple[str, subprocess.Popen]] = {}
    try:
        for name, (core, env) in specs.items():
            started[name] = _start_facade(core, env, logs, name)
        yield Facades(**{name: base for name, (base, _) in started.items()})
    finally:
        for _, process in started.values():
            process.send_signal(signal.SIGTERM)
        for _, process in started.values():
            stop_process(process, timeout_s=15)


def sdk(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


def async_sdk(base: str, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def client(server):  # noqa: F811
    return sdk(server.base)


@pytest.fixture
def async_client(server):  # noqa: F811
    return async_sdk(server.base)


def core_gauges(server) -> dict[str, float]:  # noqa: F811
    """The core's `tandem:*` samples, by name."""
    body = httpx.get(server.metrics_url, timeout=5).text
    return {match[1]: float(match[2])
            for match in re.finditer(r"^tandem:(\w+) (\S+)$", body, re.M)}


def wait_for_idle_core(server, within_s: float, baseline_usage: float) -> dict[str, float]:  # noqa: F811
    """Poll the core's metrics until no request runs and the KV usage is back to baseline."""
    deadline = time.monotonic() + within_s
    while True:
        gauges = core_gauges(server)
        idle = (gauges["num_requests_running"] == 0 and gauges["num_requests_waiting"] == 0
                and gauges["kv_cache_usage_perc"] <= baseline_usage)
        if idle or time.monotonic() > deadline:
            return gauges
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# 001: ranges → 400, vLLM extras, response_format, best_of, stop_reason, embeddings


@pytest.mark.parametrize(("param", "value"), [
    ("temperature", 2.5), ("temperature", -0.1), ("top_p", 0), ("top_p", 1.5),
    ("frequency_penalty", 2.5), ("frequency_penalty", -3), ("presence_penalty", 3),
    ("presence_penalty", -2.5), ("n", 0),
])
def test_out_of_range_values_are_bad_requests(client, param, value):
    for create in (
        lambda: client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2,
                                               **{param: value}),
        lambda: client.completions.create(model=MODEL, prompt="hi", max_tokens=2,
                                          **{param: value}),
    ):
        with pytest.raises(openai.BadRequestError) as bad:
            create()
        assert bad.value.status_code == 400
        assert (bad.value.body["type"], bad.value.body["param"]) == (
            "invalid_request_error", param)


async def test_async_out_of_range_and_streaming_bad_requests(async_client, client):
    for param, value in (("top_p", 0), ("temperature", 2.01), ("presence_penalty", -2.01)):
        with pytest.raises(openai.BadRequestError) as bad:
            await async_client.chat.completions.create(
                model=MODEL, messages=USER, max_tokens=2, stream=True, **{param: value})
        assert bad.value.body["param"] == param
        with pytest.raises(openai.BadRequestError) as bad:
            await async_client.completions.create(model=MODEL, prompt="hi", **{param: value})
        assert bad.value.body["param"] == param
        with pytest.raises(openai.BadRequestError) as bad:  # sync streaming: before any chunk
            client.completions.create(model=MODEL, prompt="hi", stream=True, **{param: value})
        assert bad.value.body["param"] == param
    # the edges themselves are fine
    ok = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=1, temperature=2,
                                        top_p=1, frequency_penalty=0, presence_penalty=0, n=1)
    assert ok.choices[0].finish_reason in ("length", "stop")


def test_best_of_and_echo(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="hi", n=3, best_of=2)
    assert bad.value.body["param"] == "best_of"
    with pytest.raises(openai.BadRequestError) as bad:  # streaming: a 400, not a broken stream
        client.completions.create(model=MODEL, prompt="hi", n=2, best_of=1, stream=True)
    assert bad.value.body["param"] == "best_of"
    same = client.completions.create(model=MODEL, prompt="hi", n=2, best_of=2, max_tokens=2,
                                     temperature=0, extra_body={"ignore_eos": True})
    assert len(same.choices) == 2
    with pytest.raises(openai.BadRequestError) as chat_best_of:  # chat: only the neutral value
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2,
                                       extra_body={"best_of": 3})
    assert chat_best_of.value.body["param"] == "best_of"
    with pytest.raises(openai.BadRequestError) as chat_echo:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2,
                                       extra_body={"echo": True})
    assert chat_echo.value.body["param"] == "echo"
    neutral = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2,
                                             extra_body={"best_of": 1, "echo": False})
    assert neutral.choices


JSON_FORMATS = [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "greeting", "strict": True, "schema": {
        "type": "object", "properties": {"hello": {"enum": ["world", "there"]}},
        "required": ["hello"], "additionalProperties": False}}},
]


@pytest.mark.parametrize("response_format", JSON_FORMATS, ids=["json_object", "json_schema"])
async def test_json_response_format_is_honoured(client, async_client, response_format):
    """Structured output is constrained by the core: JSON, never plain text that claims to be
    — streaming and not, sync and async, the same text for the same seed. (An open-ended
    `json_object` may be cut by max_tokens on a random-weight model: then a JSON prefix.)"""
    texts = []
    for stream in (False, True):
        kwargs = dict(model=MODEL, messages=USER, max_tokens=40, response_format=response_format,
                      temperature=1, seed=5, stream=stream)
        if stream:
            chunks = [c for c in client.chat.completions.create(**kwargs) if c.choices]
            texts.append(("".join(c.choices[0].delta.content or "" for c in chunks),
                          chunks[-1].choices[0].finish_reason))
            async_chunks = [c async for c in await async_client.chat.completions.create(**kwargs)
                            if c.choices]
            texts.append(("".join(c.choices[0].delta.content or "" for c in async_chunks),
                          async_chunks[-1].choices[0].finish_reason))
        else:
            for response in (client.chat.completions.create(**kwargs),
                             await async_client.chat.completions.create(**kwargs)):
                texts.append((response.choices[0].message.content,
                              response.choices[0].finish_reason))
    assert len(set(texts)) == 1, texts
    text, finish = texts[0]
    assert text.startswith("{")
    if response_format["type"] == "json_schema":
        assert finish == "stop" and json.loads(text)["hello"] in ("world", "there")
    elif finish == "stop":
        assert isinstance(json.loads(text), dict)


VLLM_EXTRAS = {"top_k": 5, "min_p": 0.05, "use_beam_search": False, "repetition_penalty": 1.0,
               "length_penalty": 1.0, "min_tokens": 0, "ignore_eos": True,
               "skip_special_tokens": True, "include_stop_str_in_output": False,
               "stop_token_ids": [], "spaces_between_special_tokens": True, "priority": 0,
               "cache_salt": "seeds"}


async def test_vllm_extras_are_accepted(client, async_client):
    """vLLM's sampling extras through extra_body: 200, never 422/400, and acted on."""
    chat = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4,
                                          temperature=0, extra_body=VLLM_EXTRAS)
    assert chat.usage.completion_tokens == 4 and chat.choices[0].finish_reason == "length"
    stream = client.completions.create(model=MODEL, prompt="hi", max_tokens=3, temperature=0,
                                       stream=True, extra_body=VLLM_EXTRAS)
    assert [c.choices[0].finish_reason for c in stream if c.choices][-1] == "length"
    async_result = await async_client.completions.create(
        model=MODEL, prompt="hi", max_tokens=3, temperature=0,
        extra_body={**VLLM_EXTRAS, "add_special_tokens": True})
    assert async_result.usage.completion_tokens == 3
    async_stream = await async_client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=3, stream=True, temperature=0,
        extra_body={**VLLM_EXTRAS, "add_generation_prompt": True, "chat_template_kwargs": {}})
    finishes = [c.choices[0].finish_reason async for c in async_stream if c.choices]
    assert finishes[-1] == "length"


def test_stop_reason_on_choices(client):
    """vLLM's `stop_reason`: the stop string that ended a choice; null when the length did."""
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=0,
                  extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0]
    assert full.finish_reason == "length" and full.model_extra.get("stop_reason") is None
    stop = full.text[4:7]
    assert len(stop) == 3 and full.text.find(stop) == 4
    stopped = client.completions.create(**kwargs, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.model_extra["stop_reason"] == stop
    chunks = [c for c in client.completions.create(**kwargs, stop=[stop], stream=True)
              if c.choices]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].model_extra["stop_reason"] == stop


# ---------------------------------------------------------------------------------------------
# 002: the official client, only base_url changed


async def test_async_completions_streaming_and_not(async_client):
    kwargs = dict(model=MODEL, prompt="The quick brown fox", max_tokens=6, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = await async_client.completions.create(**kwargs)
    stream = await async_client.completions.create(**kwargs, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 6


# ---------------------------------------------------------------------------------------------
# 004: unknown fields, roles, parts, gateway fields, x-request-id, 401


def test_unknown_fields_are_tolerated_and_named(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=USER, max_tokens=2,
        extra_body={"temprature": 0.5, "x_vendor_flag": {"a": 1}})
    assert raw.status_code == 200
    assert raw.headers["x-tandem-ignored-params"] == "temprature, x_vendor_flag"
    assert raw.parse().choices[0].message.role == "assistant"


TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CONVERSATION = [
    {"role": "developer", "content": "Be terse."},
    {"role": "system", "content": [{"type": "text", "text": "You know "},
                                   {"type": "text", "text": "the weather."}]},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."},
    {"role": "function", "name": "get_weather", "content": "Sunny."},
    {"role": "user", "content": "Thanks. And tomorrow?"},
]


async def test_every_role_and_content_parts(client, async_client):
    result = client.chat.completions.create(model=MODEL, messages=CONVERSATION, max_tokens=3,
                                            temperature=0, tools=[TOOL],
                                            extra_body={"ignore_eos": True})
    assert result.usage.completion_tokens == 3 and result.usage.prompt_tokens > 20
    stream = await async_client.chat.completions.create(
        model=MODEL, messages=CONVERSATION, max_tokens=3, temperature=0, tools=[TOOL],
        stream=True, extra_body={"ignore_eos": True})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == result.choices[0].message.content
    # parts are concatenated: the same text as one string
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "Say "},
                                             {"type": "text", "text": "hello."}]}]
    parts = client.chat.completions.create(model=MODEL, messages=as_parts, max_tokens=4,
                                           temperature=0, extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4,
                                           temperature=0, extra_body={"ignore_eos": True})
    assert parts.choices[0].message.content == plain.choices[0].message.content
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


def test_gateway_request_fields_are_accepted(client):
    """The fields an OpenAI SDK app sends: tools + tool_choice, logprobs, seed, stream_options,
    response_format text, user/metadata/store/parallel_tool_calls."""
    kwargs = dict(model=MODEL, messages=USER, max_tokens=3, temperature=0.7, seed=7,
                  tools=[TOOL], tool_choice="auto", parallel_tool_calls=True, logprobs=True,
                  top_logprobs=2, response_format={"type": "text"}, user="u-7", store=False,
                  metadata={"k": "v"}, extra_body={"ignore_eos": True})
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    assert raw.headers["x-tandem-ignored-params"] == "metadata, store, user"
    first = raw.parse()
    assert len(first.choices[0].logprobs.content) == 3
    stream = client.chat.completions.create(**kwargs, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content  # same seed, same tokens
    with pytest.raises(openai.BadRequestError) as refused:  # a function that is not a tool
        client.chat.completions.create(model=MODEL, messages=USER, tools=[TOOL], tool_choice={
            "type": "function", "function": {"name": "not_a_tool"}})
    assert refused.value.body["param"] == "tool_choice"


def test_request_id_on_responses_streams_and_errors(client):
    chat = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2,
                                          extra_headers={"x-request-id": "seed-rid-1"})
    assert chat._request_id == "seed-rid-1" and chat.id == "chatcmpl-seed-rid-1"
    generated = client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert generated._request_id and generated._request_id != "seed-rid-1"
    stream = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2,
                                            stream=True,
                                            extra_headers={"x-request-id": "seed-rid-2"})
    assert stream.response.headers["x-request-id"] == "seed-rid-2"
    assert all(chunk.id == "chatcmpl-seed-rid-2" for chunk in stream)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL, messages=USER, top_p=7,
                                       extra_headers={"x-request-id": "seed-rid-3"})
    assert bad.value.request_id == "seed-rid-3"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.request_id
    assert client.models.with_raw_response.list().headers["x-request-id"]


async def test_async_request_id_is_echoed(async_client):
    result = await async_client.completions.create(
        model=MODEL, prompt="hi", max_tokens=2, extra_headers={"x-request-id": "seed-rid-a"})
    assert result._request_id == "seed-rid-a"
    with pytest.raises(openai.BadRequestError) as bad:
        await async_client.completions.create(model=MODEL, prompt="hi", n=0,
                                              extra_headers={"x-request-id": "seed-rid-b"})
    assert bad.value.request_id == "seed-rid-b"


def test_missing_or_wrong_key_is_401_bearer(facades):
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(facades.keyed, "wrong-key").chat.completions.create(model=MODEL, messages=USER)
    assert refused.value.status_code == 401
    assert refused.value.response.headers["www-authenticate"] == "Bearer"
    assert refused.value.request_id
    assert (refused.value.body["type"], refused.value.body["code"]) == (
        "invalid_request_error", "invalid_api_key")
    # no key at all (the SDK insists on one; plain HTTP does not)
    missing = httpx.post(f"{facades.keyed}/v1/chat/completions",
                         json={"model": MODEL, "messages": USER})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["x-request-id"]
    with pytest.raises(openai.AuthenticationError) as streaming:
        sdk(facades.keyed, "wrong-key").completions.create(model=MODEL, prompt="hi",
                                                            stream=True)
    assert streaming.value.response.headers["www-authenticate"] == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        sdk(facades.keyed, "wrong-key").models.list()
    allowed = sdk(facades.keyed, API_KEYS[1])
    assert [m.id for m in allowed.models.list().data][0] == MODEL
    chunks = list(allowed.chat.completions.create(model=MODEL, messages=USER, max_tokens=2,
                                                  stream=True,
                                                  extra_body={"ignore_eos": True}))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert httpx.get(f"{facades.keyed}/health").status_code == 200  # probes stay open


async def test_async_missing_key_is_401_bearer(facades):
    with pytest.raises(openai.AuthenticationError) as refused:
        await async_sdk(facades.keyed, "nope").chat.completions.create(
            model=MODEL, messages=USER, stream=True)
    assert refused.value.response.headers["www-authenticate"] == "Bearer"
    result = await async_sdk(facades.keyed, API_KEYS[0]).completions.create(
        model=MODEL, prompt="hi", max_tokens=2)
    assert result.choices


# ---------------------------------------------------------------------------------------------
# disconnect, 503, 504, 413 through the real stack


def test_disconnect_aborts_the_request_and_frees_its_pages(server):  # noqa: F811
    baseline = wait_for_idle_core(server, within_s=60, baseline_usage=1.0)
    assert baseline["num_requests_running"] == 0
    max_tokens, n = 220, 4  # ~1000 tokens/s on CPU: the whole request takes about a second
    body = {"model": MODEL, "messages": USER, "max_tokens": max_tokens, "n": n, "stream": True,
            "ignore_eos": True, "temperature": 0}
    with httpx.Client(base_url=server.base, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            for _ in range(3):
                assert json.loads(next(lines).removeprefix("data: "))["choices"]
            during = core_gauges(server)
    after = wait_for_idle_core(server, within_s=60, baseline_usage=baseline["kv_cache_usage_perc"])
    assert during["num_requests_running"] == n and during["kv_cache_usage_perc"] > 0
    assert after["num_requests_running"] == 0, after
    assert after["kv_cache_usage_perc"] <= baseline["kv_cache_usage_perc"], after
    generated = after["generation_tokens_total"] - baseline["generation_tokens_total"]
    assert generated < max_tokens * n, "the request ran to its end instead of being aborted"


async def test_dead_core_is_503_should_retry(facades):
    for create in (
        lambda: sdk(facades.dead).chat.completions.create(model=MODEL, messages=USER),
        lambda: sdk(facades.dead).completions.create(model=MODEL, prompt="hi", stream=True),
    ):
        with pytest.raises(openai.InternalServerError) as unavailable:
            create()
        assert unavailable.value.status_code == 503
        assert unavailable.value.response.headers["x-should-retry"] == "true"
        assert (unavailable.value.body["type"], unavailable.value.body["code"]) == (
            "server_error", "service_unavailable")
        assert unavailable.value.request_id
    with pytest.raises(openai.InternalServerError) as async_unavailable:
        await async_sdk(facades.dead).chat.completions.create(model=MODEL, messages=USER,
                                                              stream=True)
    assert async_unavailable.value.status_code == 503
    assert httpx.get(f"{facades.dead}/ready").status_code == 503


def test_deadline_is_504_and_frees_the_pages(facades, server):  # noqa: F811
    baseline = wait_for_idle_core(server, within_s=60, baseline_usage=1.0)
    max_tokens, n = 220, 4  # 880 tokens: several times the deadline
    with pytest.raises(openai.InternalServerError) as timed_out:
        sdk(facades.hurried).chat.completions.create(
            model=MODEL, messages=USER, max_tokens=max_tokens, n=n, temperature=0,
            extra_body={"ignore_eos": True})
    assert timed_out.value.status_code == 504
    assert (timed_out.value.body["type"], timed_out.value.body["code"]) == (
        "server_error", "timeout")
    assert timed_out.value.request_id
    after = wait_for_idle_core(server, within_s=60,
                               baseline_usage=baseline["kv_cache_usage_perc"])
    assert after["num_requests_running"] == 0, after
    generated = after["generation_tokens_total"] - baseline["generation_tokens_total"]
    assert generated < max_tokens * n, "the deadline did not stop the core"
    # streaming: a deadline after the first byte is an error event then [DONE]; before it, a 504
    body = {"model": MODEL, "messages": USER, "max_tokens": max_tokens, "n": n, "stream": True,
            "ignore_eos": True}
    response = httpx.post(f"{facades.hurried}/v1/chat/completions", json=body, timeout=10)
    if response.status_code == 504:
        assert response.json()["error"]["code"] == "timeout"
    else:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "timeout"
        assert not any('"finish_reason":"length"' in event for event in events)


def test_body_over_the_limit_is_413(facades):
    keyed = sdk(facades.keyed, API_KEYS[0])
    with pytest.raises(openai.APIStatusError) as too_large:
        keyed.chat.completions.create(model=MODEL, max_tokens=2, messages=[
            {"role": "user", "content": "x" * (BODY_LIMIT_BYTES + 1)}])
    assert too_large.value.status_code == 413
    assert too_large.value.body["code"] == "request_too_large"
    assert too_large.value.request_id
    just_under = keyed.completions.create(model=MODEL, prompt="word " * 100, max_tokens=1)
    assert just_under.choices
