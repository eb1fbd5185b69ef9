"""FastAPI dependencies of the routes, as `Annotated[...]` aliases.

`CoreStub` and `CoreChannel` come from the app's lifespan (one gRPC channel per process),
`RequestId` from the request-id middleware, `CoreCallOptions` (request id, deadline and W3C
trace context of the core calls: facade/tracing.py), `Settings` from `create_app()`, and
`require_api_key` checks `Authorization: Bearer` on each route that lists it
(`require_metrics_auth` on GET /metrics, when `metrics_require_auth` asks for it;
`require_anthropic_key` on the Messages API's: `x-api-key` or Bearer, and `anthropic-version`).
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated

import grpc
from fastapi import Depends, Request

from facade.errors import ApiError, service_unavailable
from facade.generation import CallOptions
from facade.settings import FacadeSettings
from facade.tracing import request_span, trace_metadata
from tandem.v1.inference_pb2_grpc import InferenceStub

# What `anthropic-version` must look like.
ANTHROPIC_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")


def _not_started() -> ApiError:
    return service_unavailable("The facade has no connection to the core yet.")


def get_settings(request: Request) -> FacadeSettings:
    return request.app.state.settings


def get_channel(request: Request) -> grpc.aio.Channel:
    channel = getattr(request.app.state, "channel", None)
    if channel is None:
        raise _not_started()
    return channel


def get_stub(request: Request) -> InferenceStub:
    stub = getattr(request.app.state, "stub", None)
    if stub is None:
        raise _not_started()
    return stub


def _accepted_keys(request: Request) -> list[str]:
    keys = getattr(request.app.state, "api_keys", None)
    return request.app.state.settings.api_keys if keys is None else keys


def _is_accepted(presented: str, keys: list[str]) -> bool:
    # compare against every key, so timing tells nothing about which prefix matched
    matches = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    return any(matches)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def require_api_key(request: Request) -> None:
    """401 unless the request carries one of the accepted keys (no keys: open).

    The accepted keys are `TANDEM_API_KEYS` plus the lines of `TANDEM_API_KEYS_FILE`, read once
    by `create_app()` into `app.state.api_keys`.
    """
    keys = _accepted_keys(request)
    if not keys:
        return
    token = _bearer_token(request)
    if token is not None and _is_accepted(token, keys):
        return
    raise ApiError(
        401,
        "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
        type="invalid_request_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_anthropic_key(request: Request) -> None:
    """The Messages API's check: the same keys, sent as `x-api-key` (Anthropic's header) or as
    `Authorization: Bearer`; and `anthropic-version`, when sent, a date (YYYY-MM-DD: every
    version gets the same answers; SDKs send their own release's, e.g. 2023-06-01)."""
    version = request.headers.get("anthropic-version")
    if version is not None and not ANTHROPIC_VERSION.fullmatch(version.strip()):
        raise ApiError(400, f"Invalid anthropic-version '{version[:40]}': expected a date "
                       "such as 2023-06-01.", param="anthropic-version")
    keys = _accepted_keys(request)
    if not keys:
        return
    for token in (request.headers.get("x-api-key"), _bearer_token(request)):
        if token is not None and _is_accepted(token.strip(), keys):
            return
    raise ApiError(
        401,
        "Incorrect or missing API key. Send it as 'x-api-key: <key>' "
        "(or 'Authorization: Bearer <key>').",
        type="authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


# `dependencies=` of every route that needs a key (health probes stay open).
API_KEY_REQUIRED = [Depends(require_api_key)]
# `dependencies=` of the Messages API's routes (x-api-key, anthropic-version).
ANTHROPIC_KEY_REQUIRED = [Depends(require_anthropic_key)]


def require_metrics_auth(request: Request) -> None:
    """GET /metrics: open unless `metrics_require_auth`, then the same keys as the API."""
    if request.app.state.settings.metrics_require_auth:
        require_api_key(request)


def get_request_id(request: Request) -> str:
    """The id the middleware assigned (taken from `x-request-id` or generated)."""
    return request.state.request_id


Settings = Annotated[FacadeSettings, Depends(get_settings)]
CoreChannel = Annotated[grpc.aio.Channel, Depends(get_channel)]
CoreStub = Annotated[InferenceStub, Depends(get_stub)]
RequestId = Annotated[str, Depends(get_request_id)]


def get_call_options(request: Request, request_id: RequestId, settings: Settings) -> CallOptions:
    return CallOptions(request_id=request_id, timeout_s=settings.request_timeout_s,
                       trace=trace_metadata(request), span=request_span(request))


# Metadata and deadline of this request's core calls.
CoreCallOptions = Annotated[CallOptions, Depends(get_call_options)]


def resolve_model(requested: str | None, settings: FacadeSettings) -> str:
    """The model name sent to the core: the request's, the configured default, or ""."""
    return requested or settings.default_model or ""
