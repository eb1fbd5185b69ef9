"""POST /v1/embeddings and POST /v1/score through a real uvicorn facade against the fake core,
driven with the official openai SDK (and httpx where the raw JSON or headers matter).

Embeddings: float and base64 give the same float32 values (also the SDK's own default, which
asks for base64 and decodes it), `dimensions` and every input form reach the right proto fields.
Score: exact scores, softmax, token ids, many items, unicode. Both: every 400 the facade raises
names its param, core errors map per the error table, ignored fields land in the header, API
keys and request ids apply.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import httpx
import openai
import pytest

from facade.app import create_app
from facade.limits import LimitSettings, get_limits
from facade.protocol_policy import IGNORED_PARAMS_HEADER
from facade.settings import FacadeSettings
from tandem.v1 import inference_pb2 as pb
from tests.facade.conftest import start_facade, stop_facade
from tests.facade.fake_core import EMBEDDING_DIMENSIONS, fake_embedding, fake_scores

EMBEDDINGS = "/v1/embeddings"
SCORE = "/v1/score"
ENVELOPE_KEYS = {"message", "type", "param", "code"}
LABELS = [1, 2, 3]


@pytest.fixture(scope="module")
def sdk(facade_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{facade_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(facade_url: str):
    with httpx.Client(base_url=facade_url, timeout=10) as client:
        yield client


def error_of(response: httpx.Response, status: int = 400) -> dict:
    """The envelope of an error response, checked for its shape."""
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id")
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ENVELOPE_KEYS
    return error


def as_float32(values: list[float]) -> list[float]:
    """Values rounded to float32, as they cross the proto."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def text_input(text: str) -> pb.ScoreInput:
    return pb.ScoreInput(text=text)


def token_input(ids: list[int]) -> pb.ScoreInput:
    return pb.ScoreInput(tokens=pb.TokenIds(ids=ids))


def score(sdk: openai.OpenAI, **body) -> dict:
    return sdk.post("/score", body={"model": "tiny-demo", "label_token_ids": LABELS, **body},
                    cast_to=dict[str, Any])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Embeddings: success


def test_embeddings_float(sdk, fake_core):
    result = sdk.embeddings.create(model="embed-demo", input=["the cat", "a dog"],
                                   encoding_format="float")  # fmt: skip
    assert result.object == "list" and result.model == "embed-demo"
    assert [item.index for item in result.data] == [0, 1]
    assert {item.object for item in result.data} == {"embedding"}
    for item, text in zip(result.data, ["the cat", "a dog"], strict=True):
        assert item.embedding == as_float32(fake_embedding(text_input(text)))
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (4, 4)
    embed = fake_core.last_unary_request()[1]
    assert isinstance(embed, pb.EmbedRequest) and embed.model == "embed-demo"
    assert list(embed.inputs) == [text_input("the cat"), text_input("a dog")]
    assert not embed.HasField("dimensions")


def test_embeddings_base64_decodes_to_the_same_float32(sdk, http):
    texts = ["the cat", "a dog"]
    floats = sdk.embeddings.create(model="embed-demo", input=texts, encoding_format="float")
    encoded = sdk.embeddings.create(model="embed-demo", input=texts, encoding_format="base64")
    for as_list, as_text in zip(floats.data, encoded.data, strict=True):
        assert isinstance(as_text.embedding, str)  # the SDK leaves an asked-for format alone
        raw = base64.b64decode(as_text.embedding)
        assert len(raw) == 4 * EMBEDDING_DIMENSIONS
        assert list(struct.unpack(f"<{EMBEDDING_DIMENSIONS}f", raw)) == as_list.embedding
    body = http.post(EMBEDDINGS, json={"input": "x", "encoding_format": "base64"}).json()
    assert isinstance(body["data"][0]["embedding"], str)


def test_sdk_default_format_asks_base64_and_decodes_it(sdk):
    raw = sdk.embeddings.with_raw_response.create(model="embed-demo", input="the cat")
    assert raw.http_request.read() and b'"encoding_format":"base64"' in raw.http_request.content
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)
    assert raw.parse().data[0].embedding == as_float32(fake_embedding(text_input("the cat")))


def test_embeddings_dimensions_are_forwarded(sdk, fake_core):
    result = sdk.embeddings.create(model="embed-demo", input="the cat", dimensions=3,
                                   encoding_format="float")  # fmt: skip
    embed = fake_core.last_unary_request()[1]
    assert embed.HasField("dimensions") and embed.dimensions == 3
    assert result.data[0].embedding == as_float32(fake_embedding(text_input("the cat"), 3))


@pytest.mark.parametrize(
    ("value", "inputs"),
    [
        ("one text", [text_input("one text")]),
        (["a", "b c", "d"], [text_input("a"), text_input("b c"), text_input("d")]),
        ([5, 6, 7], [token_input([5, 6, 7])]),
        ([[5, 6], [7]], [token_input([5, 6]), token_input([7])]),
    ],
    ids=["text", "texts", "token-ids", "token-id-lists"],
)
def test_embeddings_input_forms_map_to_the_proto(sdk, fake_core, value, inputs):
    result = sdk.embeddings.create(model="embed-demo", input=value, encoding_format="float")
    assert list(fake_core.last_unary_request()[1].inputs) == inputs
    assert [item.index for item in result.data] == list(range(len(inputs)))
    expected = [as_float32(fake_embedding(one)) for one in inputs]
    assert [item.embedding for item in result.data] == expected


def test_embeddings_without_model_let_the_core_choose(http, fake_core):
    for body in ({"input": "x"}, {"input": "x", "model": ""}, {"input": "x", "model": None}):
        response = http.post(EMBEDDINGS, json=body)
        assert response.status_code == 200, response.text
        assert fake_core.last_unary_request()[1].model == ""
        assert response.json()["model"] == "embed-demo"  # the core's answer
        assert set(response.json()) == {"object", "data", "model", "usage"}
        assert set(response.json()["usage"]) == {"prompt_tokens", "total_tokens"}


async def test_async_sdk_embeddings(facade_url):
    client = openai.AsyncOpenAI(base_url=f"{facade_url}/v1", api_key="unused", max_retries=0)
    result = await client.embeddings.create(model="embed-demo", input=["p", "q"])
    assert [item.embedding for item in result.data] == [
        as_float32(fake_embedding(text_input(text))) for text in ("p", "q")
    ]
    await client.close()


# ---------------------------------------------------------------------------------------------
# Embeddings: errors


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input[0]"),
        ({"input": ["a", ""]}, "input[1]"),
        ({"input": [1, -2]}, "input[1]"),
        ({}, "input"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": -3}, "dimensions"),
        ({"input": "x", "dimensions": "four"}, "dimensions"),
        ({"input": 7}, "input"),
    ],
    ids=["empty-text", "empty-list", "empty-ids", "empty-text-in-list", "negative-id",
         "missing", "bad-format", "zero-dims", "negative-dims", "text-dims", "number"],
)  # fmt: skip
def test_embeddings_400_names_the_param(http, body, param):
    error = error_of(http.post(EMBEDDINGS, json={"model": "embed-demo", **body}))
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_embeddings_400_through_the_sdk(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model="embed-demo", input="", encoding_format="float")
    assert caught.value.param == "input" and caught.value.code == "invalid_value"


def test_embeddings_core_errors(sdk):
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.embeddings.create(model="missing", input="x")
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.BadRequestError) as generative:
        sdk.embeddings.create(model="generate-only", input="x")
    assert (generative.value.code, generative.value.param) == ("unsupported_parameter", "model")
    with pytest.raises(openai.BadRequestError) as too_big:
        sdk.embeddings.create(model="embed-demo", input="x", dimensions=EMBEDDING_DIMENSIONS + 1)
    assert (too_big.value.code, too_big.value.param) == ("invalid_value", "dimensions")
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk.embeddings.create(model="too-long", input="x")
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.RateLimitError) as overloaded:
        sdk.embeddings.create(model="overloaded", input="x")
    assert overloaded.value.response.headers["retry-after"] == "8"


def test_embeddings_missing_from_the_core_is_a_500(http):
    error = error_of(http.post(EMBEDDINGS, json={"model": "broken", "input": ["a", "b"]}), 500)
    assert (error["type"], error["code"]) == ("server_error", "internal_error")


def test_embeddings_ignored_and_refused_fields(http):
    body = {"model": "embed-demo", "input": "x", "user": "u1", "my_vendor_flag": True}
    response = http.post(EMBEDDINGS, json=body)
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED_PARAMS_HEADER] == "my_vendor_flag, user"
    plain = http.post(EMBEDDINGS, json={"model": "embed-demo", "input": "x"})
    assert IGNORED_PARAMS_HEADER not in plain.headers
    refused = http.post(EMBEDDINGS, json={"input": "x", "truncate_prompt_tokens": 4})
    error = error_of(refused)
    assert (error["param"], error["code"]) == ("truncate_prompt_tokens", "unsupported_parameter")


# ---------------------------------------------------------------------------------------------
# Score: success


def test_score_basic(sdk, fake_core):
    result = score(sdk, query="I pledge allegiance", items=[" to the flag", " of the States"])
    assert result["object"] == "scoring" and result["model"] == "tiny-demo"
    assert isinstance(result["created"], int)
    expected = [as_float32(fake_scores(index, LABELS, False)) for index in range(2)]
    assert result["scores"] == expected
    assert result["usage"] == {
        "prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 3},
    }  # fmt: skip
    request = fake_core.last_unary_request()[1]
    assert isinstance(request, pb.ScoreRequest) and request.model == "tiny-demo"
    assert request.query == text_input("I pledge allegiance")
    assert list(request.items) == [text_input(" to the flag"), text_input(" of the States")]
    assert list(request.label_token_ids) == LABELS
    assert (request.apply_softmax, request.item_first) == (False, False)


def test_score_softmax_and_item_first(sdk, fake_core):
    result = score(sdk, query="q", items=["a", "b"], apply_softmax=True, item_first=True)
    for scores in result["scores"]:
        assert scores == as_float32(fake_scores(0, LABELS, True))
        assert math.isclose(sum(scores), 1.0, rel_tol=1e-6)
    request = fake_core.last_unary_request()[1]
    assert (request.apply_softmax, request.item_first) == (True, True)


def test_score_token_ids(sdk, fake_core):
    result = score(sdk, query=[10, 11], items=[[12], [13, 14], []], label_token_ids=[7])
    assert result["scores"] == [as_float32(fake_scores(i, [7], False)) for i in range(3)]
    request = fake_core.last_unary_request()[1]
    assert request.query == token_input([10, 11])
    assert list(request.items) == [token_input([12]), token_input([13, 14]), token_input([])]
    assert result["usage"]["prompt_tokens"] == 2 * 3 + 3


def test_score_twenty_items_keep_their_order(sdk, fake_core):
    items = [f" item number {index}" for index in range(20)]
    result = score(sdk, query="pick", items=items)
    assert len(result["scores"]) == 20
    assert result["scores"] == [as_float32(fake_scores(i, LABELS, False)) for i in range(20)]
    assert [item.text for item in fake_core.last_unary_request()[1].items] == items


def test_score_unicode_and_special_characters_arrive_unchanged(sdk, fake_core):
    items = [
        "héllo wörld 🌍", "中文 テキスト", "<|endoftext|>", "\n\t\"quotes\" \\ back", "", "\u0000",
    ]  # fmt: skip
    query = "Ünïcödé query — «ok» ✓"
    result = score(sdk, query=query, items=items)
    assert len(result["scores"]) == len(items)
    request = fake_core.last_unary_request()[1]
    assert request.query.text == query and [item.text for item in request.items] == items


def test_score_without_model_uses_the_default(http, fake_core, background, core_double):
    response = http.post(SCORE, json={"query": "q", "items": ["a"], "label_token_ids": [1]})
    assert response.status_code == 200, response.text
    assert fake_core.last_unary_request()[1].model == ""
    assert response.json()["model"] == "tiny-demo"
    settings = FacadeSettings(core_address=f"127.0.0.1:{core_double[2]}", default_model="org/m")
    facade = background.run(start_facade(settings))
    try:
        body = {"query": "q", "items": ["a"], "label_token_ids": [1]}
        response = httpx.post(f"{facade.base_url}{SCORE}", json=body, timeout=10)
        assert response.status_code == 200 and response.json()["model"] == "org/m"
        assert fake_core.last_unary_request()[1].model == "org/m"
    finally:
        background.run(stop_facade(facade))


def test_score_request_id_reaches_the_core(http, fake_core):
    body = {"query": "q", "items": ["a"], "label_token_ids": [1]}
    response = http.post(SCORE, json=body, headers={"x-request-id": "score-req-1"})
    assert response.headers["x-request-id"] == "score-req-1"
    assert fake_core.last_unary_request()[0] == "score-req-1"


# ---------------------------------------------------------------------------------------------
# Score: errors


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"items": []}, "items", "invalid_value"),
        ({"items": [[]]}, "items", "invalid_value"),  # token items after a text query
        ({"query": [1, 2], "items": ["a"]}, "items", "invalid_value"),
        ({"items": ["a", [1]]}, "items[1]", "invalid_value"),
        ({"label_token_ids": []}, "label_token_ids", "invalid_value"),
        ({"label_token_ids": [1, -5]}, "label_token_ids[1]", "invalid_value"),
        ({"query": [1, -2], "items": [[3]]}, "query[1]", "invalid_value"),
        ({"query": [1], "items": [[3, -4]]}, "items[0][1]", "invalid_value"),
        ({"query": None}, "query", "invalid_value"),
        ({"items": "one item"}, "items", "invalid_value"),
        ({"apply_softmax": "maybe"}, "apply_softmax", "invalid_value"),
        ({"label_token_ids": None}, "label_token_ids", "invalid_value"),
    ],
    ids=["empty-items", "tokens-after-text", "text-after-tokens", "mixed-items", "no-labels",
         "negative-label", "negative-query-id", "negative-item-id", "null-query", "bare-item",
         "bad-bool", "null-labels"],
)  # fmt: skip
def test_score_400_names_the_param(http, body, param, code):
    full = {"model": "tiny-demo", "query": "q", "items": ["a"], "label_token_ids": [1], **body}
    error = error_of(http.post(SCORE, json=full))
    assert (error["param"], error["code"]) == (param, code), error["message"]


@pytest.mark.parametrize("field", ["query", "items", "label_token_ids"])
def test_score_missing_field(http, field):
    body = {"query": "q", "items": ["a"], "label_token_ids": [1]}
    del body[field]
    error = error_of(http.post(SCORE, json=body))
    assert (error["param"], error["code"]) == (field, "missing_required_parameter")


def test_score_kind_mismatch_message_says_why(http):
    body = {"query": "q", "items": [[1]], "label_token_ids": [1]}
    message = error_of(http.post(SCORE, json=body))["message"]
    assert "query is text" in message and "items are token ids" in message


def test_score_core_errors_through_the_sdk(sdk):
    with pytest.raises(openai.NotFoundError) as missing:
        score(sdk, model="missing", query="q", items=["a"])
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.BadRequestError) as encoder:
        score(sdk, model="embed-only", query="q", items=["a"])
    assert (encoder.value.code, encoder.value.param) == ("unsupported_parameter", "model")
    with pytest.raises(openai.BadRequestError) as vocabulary:
        score(sdk, query="q", items=["a"], label_token_ids=[1, 5000])
    assert (vocabulary.value.code, vocabulary.value.param) == ("invalid_value", "label_token_ids")
    with pytest.raises(openai.BadRequestError) as too_long:
        score(sdk, model="too-long", query="q", items=["a"])
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.InternalServerError) as draining:
        score(sdk, model="draining", query="q", items=["a"])
    assert draining.value.status_code == 503
    assert draining.value.response.headers["x-should-retry"] == "true"


def test_score_non_finite_from_the_core_is_a_500(http):
    body = {"model": "broken", "query": "q", "items": ["a"], "label_token_ids": [1]}
    error = error_of(http.post(SCORE, json=body), 500)
    assert error["code"] == "internal_error" and "non-finite" in error["message"]


def test_score_null_flags_mean_false(http, fake_core):
    body = {"query": "q", "items": ["a"], "label_token_ids": [1], "apply_softmax": None,
            "item_first": None}  # fmt: skip
    assert http.post(SCORE, json=body).status_code == 200
    request = fake_core.last_unary_request()[1]
    assert (request.apply_softmax, request.item_first) == (False, False)


def test_score_ignored_and_refused_fields(http):
    body = {"query": "q", "items": ["a"], "label_token_ids": [1], "user": "u", "return_text": 1}
    response = http.post(SCORE, json=body)
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED_PARAMS_HEADER] == "return_text, user"
    refused = http.post(SCORE, json={**body, "truncate_prompt_tokens": 8})
    assert error_of(refused)["param"] == "truncate_prompt_tokens"


# ---------------------------------------------------------------------------------------------
# Both routes: caps, keys, the OpenAPI document


@pytest.fixture(scope="module")
def tight(background, core_double):
    """A facade allowing 2 inputs per request."""
    settings = FacadeSettings(core_address=f"127.0.0.1:{core_double[2]}", request_timeout_s=10)
    app = create_app(settings)
    app.dependency_overrides[get_limits] = lambda: LimitSettings(max_inputs=2)
    facade = background.run(start_facade(settings, app))
    with httpx.Client(base_url=facade.base_url, timeout=10) as client:
        yield client
    background.run(stop_facade(facade))


def test_input_caps(tight):
    assert tight.post(EMBEDDINGS, json={"input": ["a", "b"]}).status_code == 200
    assert error_of(tight.post(EMBEDDINGS, json={"input": ["a", "b", "c"]}))["param"] == "input"
    body = {"query": "q", "items": ["a", "b", "c"], "label_token_ids": [1]}
    assert error_of(tight.post(SCORE, json=body))["param"] == "items"


def test_api_keys_apply(background, core_double):
    settings = FacadeSettings(core_address=f"127.0.0.1:{core_double[2]}", api_keys=["k-one"])
    facade = background.run(start_facade(settings))

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{facade.base_url}/v1", api_key=key, max_retries=0)

    try:
        with pytest.raises(openai.AuthenticationError):
            client("wrong").embeddings.create(model="embed-demo", input="x")
        with pytest.raises(openai.AuthenticationError):
            score(client("wrong"), query="q", items=["a"])
        assert client("k-one").embeddings.create(model="embed-demo", input="x").data
        assert score(client("k-one"), query="q", items=["a"])["scores"]
    finally:
        background.run(stop_facade(facade))


def test_openapi_documents_both_routes(http):
    paths = http.get("/openapi.json").json()["paths"]
    for path in (EMBEDDINGS, SCORE):
        responses = paths[path]["post"]["responses"]
        assert {"200", "400", "401", "404", "429", "503"} <= set(responses)
        assert "422" not in responses
