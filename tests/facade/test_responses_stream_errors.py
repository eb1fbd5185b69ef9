"""The Responses stream's failure paths over real HTTP, with the fake core (tests/facade): a core
that fails after the first event ends the stream with OpenAI's `error` event and
`response.failed` (the SDK's `responses.stream()` reads them, and `get_final_response()` says
no `response.completed` came); an admission error keeps its HTTP status."""

from __future__ import annotations

import openai
import pytest

from tests.responses_stream import check_stream

USER_INPUT = "one two three four five six"


@pytest.fixture(scope="module")
def client(facade_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{facade_url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", ["midstream", "unfinished"])
def test_a_core_failure_after_the_first_event_is_an_error_event_then_failed(client, model):
    with client.responses.stream(model=model, input=USER_INPUT) as stream:
        events = list(stream)
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()
    check_stream(events)
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-2:] == ["error", "response.failed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    error, failed = events[-2], events[-1]
    assert error.code == "internal_error" and error.message
    assert failed.response.status == "failed"
    assert failed.response.error.code == "internal_error"
    if model == "midstream":
        assert "engine exploded" in error.message
        assert "response.output_text.delta" in types
    with pytest.raises(openai.NotFoundError):  # a failed response is not stored
        client.responses.retrieve(failed.response.id)


def test_an_admission_error_keeps_its_http_status(client):
    with pytest.raises(openai.NotFoundError) as caught:
        with client.responses.stream(model="missing", input=USER_INPUT) as stream:
            list(stream)
    assert caught.value.body["code"] == "model_not_found"


def test_the_fake_core_echo_streams_to_completion(client):
    with client.responses.stream(model="echo", input=USER_INPUT) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert check_stream(events)["id"] == final.id
    assert final.status == "completed" and final.output_text == USER_INPUT
