"""Structured-output clients, unchanged, against the real `tandem serve` (tiny random-weight
Llama): the OpenAI SDK's `chat.completions.parse`, LangChain's `with_structured_output` and
Instructor's `Mode.JSON`. The schemas are bounded (enums, booleans, short strings) so that a
random-weight model finishes them within max_tokens."""

from __future__ import annotations

from typing import Literal

import instructor
import openai
import pytest
from instructor.core.exceptions import IncompleteOutputException
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field

from tests.conftest import MODEL

MAX_TOKENS = 120


class Verdict(BaseModel):
    """A bounded answer: every field has few possible values."""

    label: Literal["good", "bad"]
    confident: bool
    note: str = Field(max_length=5)


class AnyFields(BaseModel):
    """Instructor's JSON mode constrains to *a* JSON object, not to this model: every field is
    optional so that whatever object a random-weight model writes parses."""

    model_config = ConfigDict(extra="allow")
    label: str | None = None


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)


MESSAGES = [{"role": "user", "content": "Judge this sentence: the sky is green."}]


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1, "seed": 7}])
def test_openai_parse_returns_the_pydantic_model(client, sampling):
    completion = client.chat.completions.parse(
        model=MODEL, messages=MESSAGES, response_format=Verdict, max_tokens=MAX_TOKENS,
        **sampling)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Verdict)
    assert message.parsed == Verdict.model_validate_json(message.content)


def test_langchain_with_structured_output_json_schema(server):
    model = ChatOpenAI(model=MODEL, base_url=f"{server.base}/v1", api_key="unused",
                       temperature=0, max_tokens=MAX_TOKENS, max_retries=0)
    verdict = model.with_structured_output(Verdict, method="json_schema").invoke(
        MESSAGES[0]["content"])
    assert isinstance(verdict, Verdict)


def test_langchain_default_structured_output_method(server):
    """Whatever method this LangChain version defaults to, it works unchanged."""
    model = ChatOpenAI(model=MODEL, base_url=f"{server.base}/v1", api_key="unused",
                       temperature=1, seed=3, max_tokens=MAX_TOKENS, max_retries=0)
    verdict = model.with_structured_output(Verdict).invoke(MESSAGES[0]["content"])
    assert isinstance(verdict, Verdict)


def test_instructor_json_mode(client):
    """`Mode.JSON` sends `json_object`: any object, with keys of any length, so a random-weight
    model closes it within max_tokens only for some seeds. The first seed whose object closes
    must parse; an unclosed one (Instructor's IncompleteOutputException) moves to the next."""
    patched = instructor.from_openai(client, mode=instructor.Mode.JSON)
    for seed in range(40):
        try:
            result, completion = patched.chat.completions.create_with_completion(
                model=MODEL, messages=MESSAGES, response_model=AnyFields, max_tokens=200,
                temperature=1, seed=seed, max_retries=0)
        except IncompleteOutputException:
            continue
        assert isinstance(result, AnyFields)
        assert completion.choices[0].finish_reason == "stop"
        return
    pytest.fail("no seed closed its JSON object within max_tokens")
