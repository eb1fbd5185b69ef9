"""The facade's half of Tandem's one error table.

Owns `ApiError` (what handlers raise), the OpenAI error envelope
`{"error": {"message", "type", "param", "code"}}` (and its pydantic model `ErrorResponse`, which
/openapi.json documents), the same errors in Anthropic's envelope
`{"type": "error", "error": {"type", "message"}}` on the Messages API's routes
(`error_response(error, path)`, `anthropic_body`), and the mapping of the core's gRPC status +
`google.rpc` details (`ErrorInfo.reason`, `BadRequest.FieldViolation`, `RetryInfo`) to an HTTP
status, OpenAI `type` and `code`. Also turns FastAPI validation errors and Starlette HTTP errors
into the same envelope.

The table as implemented (docs/architecture.md, "One error table"):

  gRPC status + ErrorInfo.reason                HTTP type / code
  INVALID_ARGUMENT + INVALID_PARAMETER (none)   400 invalid_request_error / invalid_value
  INVALID_ARGUMENT + CONTEXT_LENGTH_EXCEEDED    400 invalid_request_error / context_length_exceeded
  INVALID_ARGUMENT + UNSUPPORTED                400 invalid_request_error / unsupported_parameter
  NOT_FOUND + MODEL_NOT_FOUND (none)            404 invalid_request_error / model_not_found
  RESOURCE_EXHAUSTED + OVERLOADED (none)        429 rate_limit_error / overloaded
  UNAVAILABLE                                   503 server_error / service_unavailable
  DEADLINE_EXCEEDED                             504 server_error / timeout
  CANCELLED                                     499 cancelled / null
  UNIMPLEMENTED                                 501 server_error / not_implemented
  anything else                                 500 server_error / internal_error

"(none)": the same row applies when the core sent no ErrorInfo.

`param` comes from the first `BadRequest.FieldViolation.field` (MODEL_NOT_FOUND defaults to
"model"). `Retry-After` is `RetryInfo.retry_delay` rounded up to whole seconds, capped at 120 s
(1 s when a 429 carries no RetryInfo). 503 adds `x-should-retry: true`; 501 adds
`x-should-retry: false` (OpenAI SDKs would otherwise retry every 5xx).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse

logger = logging.getLogger(__name__)

# Trailing-metadata key of the serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"
# Longest Retry-After the facade will ever advertise.
MAX_RETRY_AFTER_S = 120
# Retry-After of a 429 whose status carries no RetryInfo.
DEFAULT_RETRY_AFTER_S = 1


class ErrorDetail(BaseModel):
    """The inside of the OpenAI error envelope; every key is always present (maybe null)."""

    message: str = Field(description="Human-readable; safe to show to the client.")
    type: str = Field(description='OpenAI error type, e.g. "invalid_request_error".')
    param: str | None = Field(description='The offending request field, e.g. "temperature".')
    code: str | None = Field(description='Machine-readable code, e.g. "model_not_found".')


class ErrorResponse(BaseModel):
    """The OpenAI error envelope `{"error": {...}}`: the body of every error response and the
    payload of an in-stream error event."""

    error: ErrorDetail


class ApiError(Exception):
    """An error the facade answers with the OpenAI envelope; handlers raise, one handler renders."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code  # HTTP status
        self.message = message  # human-readable, shown to the client
        self.type = type  # OpenAI error type, e.g. "invalid_request_error"
        self.param = param  # the offending request field, e.g. "temperature"
        self.code = code  # machine-readable code, e.g. "model_not_found"
        self.headers = dict(headers or {})  # extra response headers (Retry-After, ...)

    def body(self) -> dict[str, Any]:
        """The OpenAI error envelope."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return f"ApiError({self.status_code}, {self.type}, {self.code}, {self.message!r})"


def error_response(error: ApiError, path: str = "") -> JSONResponse:
    """Render an ApiError as an HTTP response (the request-id middleware adds x-request-id):
    the OpenAI envelope, or Anthropic's on the Messages API's routes (`path` under
    ANTHROPIC_PATH_PREFIX)."""
    if is_anthropic_path(path):
        status_code, _ = anthropic_status(error)
        return JSONResponse(anthropic_body(error), status_code=status_code,
                            headers=error.headers)  # fmt: skip
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


# ---------------------------------------------------------------------------------------------
# The same errors in Anthropic's envelope (POST /v1/messages, /v1/messages/count_tokens)

# The routes whose errors are rendered in Anthropic's envelope.
ANTHROPIC_PATH_PREFIX = "/v1/messages"

# HTTP status → Anthropic error type (Anthropic's own table).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def is_anthropic_path(path: str) -> bool:
    return path == ANTHROPIC_PATH_PREFIX or path.startswith(ANTHROPIC_PATH_PREFIX + "/")


def anthropic_status(error: ApiError) -> tuple[int, str]:
    """The HTTP status and Anthropic error type of `error`: a core that is overloaded (429
    `overloaded`) or unavailable (503) is Anthropic's 529 `overloaded_error` (which its SDKs
    retry); other 4xx keep their status (unlisted ones are `invalid_request_error`), other 5xx
    are `api_error`."""
    status = error.status_code
    if (status == 429 and error.code == "overloaded") or status == 503:
        return 529, "overloaded_error"
    kind = _ANTHROPIC_TYPES.get(status)
    if kind is None:
        kind = "api_error" if status >= 500 else "invalid_request_error"
    return status, kind


def anthropic_body(error: ApiError) -> dict[str, Any]:
    """Anthropic's error envelope `{"type": "error", "error": {"type", "message"}}`."""
    return {"type": "error", "error": {"type": anthropic_status(error)[1],
                                       "message": error.message}}  # fmt: skip


def invalid_request(
    message: str, param: str | None = None, code: str = "invalid_value"
) -> ApiError:
    """A 400 the facade raises itself for a request it can tell is wrong."""
    return ApiError(400, message, type="invalid_request_error", param=param, code=code)


def unsupported(param: str, message: str) -> ApiError:
    """A 400 for a parameter Tandem accepts syntactically but cannot honour."""
    return ApiError(
        400, message, type="invalid_request_error", param=param, code="unsupported_parameter"
    )


def internal_error(
    message: str = "The server had an error while processing your request.",
) -> ApiError:
    """A 500 for a facade bug or a broken core stream (never a silent truncation)."""
    return ApiError(500, message, type="server_error", code="internal_error")


def service_unavailable(message: str) -> ApiError:
    """A 503 the client may retry (no core reachable or ready)."""
    return ApiError(
        503,
        message,
        type="server_error",
        code="service_unavailable",
        headers={"x-should-retry": "true"},
    )


# ---------------------------------------------------------------------------------------------
# gRPC status → ApiError


@dataclass(frozen=True)
class RichStatus:
    """What the core put into `grpc-status-details-bin`, flattened."""

    message: str  # google.rpc.Status.message (falls back to the call's details())
    reason: str | None = None  # ErrorInfo.reason, e.g. "MODEL_NOT_FOUND"
    param: str | None = None  # the first BadRequest.FieldViolation.field
    retry_after_s: float | None = None  # RetryInfo.retry_delay in seconds
    metadata: dict[str, str] = field(default_factory=dict)  # ErrorInfo.metadata


@dataclass(frozen=True)
class _Row:
    """One row of the error table."""

    status_code: int  # HTTP status
    type: str  # OpenAI error type
    code: str | None  # OpenAI error code


_BY_REASON: dict[str, _Row] = {
    "INVALID_PARAMETER": _Row(400, "invalid_request_error", "invalid_value"),
    "CONTEXT_LENGTH_EXCEEDED": _Row(400, "invalid_request_error", "context_length_exceeded"),
    "UNSUPPORTED": _Row(400, "invalid_request_error", "unsupported_parameter"),
    "MODEL_NOT_FOUND": _Row(404, "invalid_request_error", "model_not_found"),
    "OVERLOADED": _Row(429, "rate_limit_error", "overloaded"),
}

_BY_STATUS: dict[grpc.StatusCode, _Row] = {
    grpc.StatusCode.INVALID_ARGUMENT: _BY_REASON["INVALID_PARAMETER"],
    grpc.StatusCode.NOT_FOUND: _BY_REASON["MODEL_NOT_FOUND"],
    grpc.StatusCode.RESOURCE_EXHAUSTED: _BY_REASON["OVERLOADED"],
    grpc.StatusCode.UNAVAILABLE: _Row(503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: _Row(504, "server_error", "timeout"),
    grpc.StatusCode.CANCELLED: _Row(499, "cancelled", None),
    grpc.StatusCode.UNIMPLEMENTED: _Row(501, "server_error", "not_implemented"),
}
_INTERNAL = _Row(500, "server_error", "internal_error")

# Reasons are only trusted with the status they belong to (a stray reason cannot turn a 500
# into a 400).
_STATUS_OF_REASON: dict[str, grpc.StatusCode] = {
    "INVALID_PARAMETER": grpc.StatusCode.INVALID_ARGUMENT,
    "CONTEXT_LENGTH_EXCEEDED": grpc.StatusCode.INVALID_ARGUMENT,
    "UNSUPPORTED": grpc.StatusCode.INVALID_ARGUMENT,
    "MODEL_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "OVERLOADED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def parse_rich_status(err: grpc.aio.AioRpcError) -> RichStatus:
    """Read google.rpc details from the call's trailing metadata; tolerant of their absence."""
    fallback = RichStatus(message=err.details() or err.code().name)
    raw = _details_bytes(err)
    if raw is None:
        return fallback
    try:
        status = status_pb2.Status.FromString(raw)
    except Exception:  # a malformed trailer must not hide the real error
        logger.warning("unparseable %s trailer on %s", STATUS_DETAILS_KEY, err.code().name)
        return fallback
    reason, param, retry_after_s, metadata = None, None, None, {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason or None, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            if bad_request.field_violations and param is None:
                param = bad_request.field_violations[0].field or None
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return RichStatus(
        message=status.message or fallback.message,
        reason=reason,
        param=param,
        retry_after_s=retry_after_s,
        metadata=metadata,
    )


def _details_bytes(err: grpc.aio.AioRpcError) -> bytes | None:
    """The raw `grpc-status-details-bin` value, if the core sent one."""
    for key, value in err.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def retry_after_header_s(retry_after_s: float | None) -> int:
    """RetryInfo delay → whole seconds for `Retry-After`, capped at MAX_RETRY_AFTER_S."""
    if retry_after_s is None:
        return DEFAULT_RETRY_AFTER_S
    return min(MAX_RETRY_AFTER_S, max(0, math.ceil(retry_after_s)))


def api_error_from_grpc(err: grpc.aio.AioRpcError) -> ApiError:
    """Map one failed core call to the HTTP error the client sees (the error table)."""
    code = err.code()
    rich = parse_rich_status(err)
    row = _BY_STATUS.get(code, _INTERNAL)
    if rich.reason is not None and _STATUS_OF_REASON.get(rich.reason) == code:
        row = _BY_REASON[rich.reason]
    param = rich.param
    if rich.reason == "MODEL_NOT_FOUND" and param is None:
        param = "model"
    headers: dict[str, str] = {}
    message = rich.message
    if row.status_code == 429 or (rich.retry_after_s is not None and row.status_code == 503):
        headers["Retry-After"] = str(retry_after_header_s(rich.retry_after_s))
    if row.status_code == 503:
        headers["x-should-retry"] = "true"
        message = f"The inference core is unavailable: {rich.message}"
    elif row.status_code == 501:
        headers["x-should-retry"] = "false"
    if row.status_code >= 500:
        logger.warning("core call failed: %s %s", code.name, rich.message)
    return ApiError(
        row.status_code, message, type=row.type, param=param, code=row.code, headers=headers
    )


# ---------------------------------------------------------------------------------------------
# FastAPI / Starlette errors → ApiError

# Union-member labels pydantic puts into error locations; they are not request fields.
_LOC_NOISE = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "function-after"})


def param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'content') → "messages[0].content" (OpenAI's param style)."""
    parts: list[str] = []
    for segment in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(segment, int):
            if parts:
                parts[-1] += f"[{segment}]"
            continue
        text = str(segment)
        if text in _LOC_NOISE or not text.isidentifier() or text[0].isupper():
            continue
        parts.append(text)
    return ".".join(parts) or None


def api_error_from_validation(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI's 422 list → one 400 naming the first offending field."""
    if not errors:
        return invalid_request("Invalid request.")
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = first.get("ctx", {}).get("error", "malformed JSON")
        message = f"The request body is not valid JSON: {detail}."
        return invalid_request(message, code="invalid_json")
    param = param_from_loc(tuple(first.get("loc", ())))
    if kind == "missing":
        where = param or "body"
        return invalid_request(
            f"Missing required parameter: '{where}'.", param, code="missing_required_parameter"
        )
    message = str(first.get("msg", "Invalid value"))
    message = message.removeprefix("Value error, ")
    if param is None and kind == "model_attributes_type":
        return invalid_request("The request body must be a JSON object.", code="invalid_json")
    return invalid_request(f"Invalid '{param}': {message}." if param else f"{message}.", param)


_HTTP_CODES = {
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
}


def api_error_from_http(
    status_code: int, detail: str, headers: dict[str, str] | None, route: str
) -> ApiError:
    """A Starlette HTTPException (404 unknown route, 405, 413 body too large) → ApiError.

    `route` is "METHOD /path", named in the message of 404 and 405.
    """
    fallback = (
        ("server_error", "internal_error")
        if status_code >= 500
        else (
            "invalid_request_error",
            None,
        )
    )
    kind, code = _HTTP_CODES.get(status_code, fallback)
    message = detail
    if status_code == 404 and detail == "Not Found":
        message = f"Invalid URL ({route})."
    elif status_code == 405:
        message = f"Method not allowed ({route})."
    return ApiError(status_code, message, type=kind, code=code, headers=headers)
