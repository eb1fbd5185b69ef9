"""Per-request size caps of the OpenAI routes: `LimitSettings` (env `TANDEM_LIMIT_*`) and the
checks that turn an over-cap request into a 400 `invalid_request_error` naming the parameter.

Owns only caps on request *shape* (how many choices, stop strings, messages, prompts, inputs);
value ranges live in the protocol models, and the context length is the core's to check. The
defaults are the contract's own limits (`tandem.limits`), which the core enforces too.
Routes read the caps through the `Limits` dependency; tests override `get_limits`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import Depends
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from facade.errors import ApiError, invalid_request
from facade.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from tandem.limits import MAX_CHOICES, MAX_INPUTS, MAX_LOGIT_BIAS_ENTRIES, MAX_STOP_STRINGS


class LimitSettings(BaseSettings):
    """Caps on one request; each over-cap value is a 400 naming its parameter."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_LIMIT_", extra="ignore", frozen=True)

    # Choices per prompt (`n`, and `best_of` of completions).
    max_n: int = Field(default=MAX_CHOICES, ge=1)
    # Largest `max_tokens` / `max_completion_tokens`; None: only the model's context length.
    max_output_tokens: int | None = Field(default=None, ge=1)
    # Stop strings per request.
    max_stop_strings: int = Field(default=MAX_STOP_STRINGS, ge=0)
    # Entries of `logit_bias`.
    max_logit_bias_entries: int = Field(default=MAX_LOGIT_BIAS_ENTRIES, ge=0)
    # Messages of one chat request.
    max_messages: int = Field(default=2048, ge=1)
    # Prompts of one completions request (each one core call).
    max_prompts: int = Field(default=64, ge=1)
    # Inputs of one embeddings or score request (items of /v1/score).
    max_inputs: int = Field(default=MAX_INPUTS, ge=1)


@lru_cache(maxsize=1)
def load_limits() -> LimitSettings:
    """The process's caps, read once from the environment."""
    return LimitSettings()


def get_limits() -> LimitSettings:
    """FastAPI dependency (override it in tests with `app.dependency_overrides`)."""
    return load_limits()


Limits = Annotated[LimitSettings, Depends(get_limits)]


def _too_many(param: str, count: int, cap: int, what: str) -> ApiError:
    return invalid_request(
        f"Invalid '{param}': {count} {what} requested, this server allows at most {cap}.", param
    )


def _check_sampling(request: SamplingFields, limits: LimitSettings) -> None:
    if request.n is not None and request.n > limits.max_n:
        raise _too_many("n", request.n, limits.max_n, "choices")
    if len(request.stop_strings) > limits.max_stop_strings:
        raise _too_many("stop", len(request.stop_strings), limits.max_stop_strings, "stop strings")
    num_biases = len(request.logit_bias or {})
    if num_biases > limits.max_logit_bias_entries:
        raise _too_many("logit_bias", num_biases, limits.max_logit_bias_entries, "entries")


def _check_output_tokens(param: str, value: int | None, limits: LimitSettings) -> None:
    cap = limits.max_output_tokens
    if cap is not None and value is not None and value > cap:
        raise invalid_request(
            f"Invalid '{param}': {value} tokens requested, this server allows at most {cap}.",
            param,
        )


def check_chat_limits(request: ChatCompletionRequest, limits: LimitSettings) -> None:
    """400 if a chat request passes a cap."""
    _check_sampling(request, limits)
    check_message_count(len(request.messages), limits)
    if request.max_completion_tokens is not None:
        _check_output_tokens("max_completion_tokens", request.max_completion_tokens, limits)
    else:
        _check_output_tokens("max_tokens", request.max_tokens, limits)


def check_message_count(num_messages: int, limits: LimitSettings) -> None:
    """400 if a request carries more chat messages than allowed."""
    if num_messages > limits.max_messages:
        raise _too_many("messages", num_messages, limits.max_messages, "messages")


def check_completion_limits(request: CompletionRequest, limits: LimitSettings) -> None:
    """400 if a completions request passes a cap."""
    _check_sampling(request, limits)
    if request.best_of is not None and request.best_of > limits.max_n:
        raise _too_many("best_of", request.best_of, limits.max_n, "choices")
    if len(request.prompts) > limits.max_prompts:
        raise _too_many("prompt", len(request.prompts), limits.max_prompts, "prompts")
    if "max_tokens" in request.model_fields_set:
        _check_output_tokens("max_tokens", request.max_tokens, limits)


def check_input_count(param: str, num_inputs: int, limits: LimitSettings) -> None:
    """400 if an embeddings/score request carries more inputs than allowed."""
    if num_inputs > limits.max_inputs:
        raise _too_many(param, num_inputs, limits.max_inputs, "inputs")
