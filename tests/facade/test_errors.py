"""The error table: gRPC status + google.rpc details → HTTP status, type, code, param, headers."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2

from facade.errors import api_error_from_grpc, api_error_from_validation, param_from_loc
from tests.facade.fake_core import rich_status


def rpc_error(status: grpc.Status) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def plain_error(code: grpc.StatusCode, details: str = "boom") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "reason", "http_status", "error_type", "error_code"),
    [
        (code_pb2.INVALID_ARGUMENT, "INVALID_PARAMETER", 400, "invalid_request_error",
         "invalid_value"),
        (code_pb2.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", 400, "invalid_request_error",
         "context_length_exceeded"),
        (code_pb2.INVALID_ARGUMENT, "UNSUPPORTED", 400, "invalid_request_error",
         "unsupported_parameter"),
        (code_pb2.NOT_FOUND, "MODEL_NOT_FOUND", 404, "invalid_request_error", "model_not_found"),
        (code_pb2.RESOURCE_EXHAUSTED, "OVERLOADED", 429, "rate_limit_error", "overloaded"),
        (code_pb2.UNAVAILABLE, None, 503, "server_error", "service_unavailable"),
        (code_pb2.DEADLINE_EXCEEDED, None, 504, "server_error", "timeout"),
        (code_pb2.CANCELLED, None, 499, "cancelled", None),
        (code_pb2.UNIMPLEMENTED, None, 501, "server_error", "not_implemented"),
        (code_pb2.INTERNAL, None, 500, "server_error", "internal_error"),
        (code_pb2.FAILED_PRECONDITION, None, 500, "server_error", "internal_error"),
        # A reason that does not belong to its status is not trusted.
        (code_pb2.INTERNAL, "MODEL_NOT_FOUND", 500, "server_error", "internal_error"),
    ],
)  # fmt: skip
def test_table(code, reason, http_status, error_type, error_code):
    error = api_error_from_grpc(rpc_error(rich_status(code, "core says no", reason)))
    assert (error.status_code, error.type, error.code) == (http_status, error_type, error_code)
    assert "core says no" in error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_field_violation_names_param():
    status = rich_status(code_pb2.INVALID_ARGUMENT, "bad", "INVALID_PARAMETER", field="top_p")
    assert api_error_from_grpc(rpc_error(status)).param == "top_p"


def test_model_not_found_param_defaults_to_model():
    status = rich_status(code_pb2.NOT_FOUND, "no such model", "MODEL_NOT_FOUND")
    assert api_error_from_grpc(rpc_error(status)).param == "model"


@pytest.mark.parametrize(
    ("delay_s", "header"), [(7.2, "8"), (0.0, "0"), (3600.0, "120"), (None, "1")]
)
def test_retry_after_rounded_up_and_capped(delay_s, header):
    status = rich_status(code_pb2.RESOURCE_EXHAUSTED, "full", "OVERLOADED", retry_delay_s=delay_s)
    assert api_error_from_grpc(rpc_error(status)).headers["Retry-After"] == header


def test_unavailable_says_retry():
    error = api_error_from_grpc(plain_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    assert error.headers["x-should-retry"] == "true"
    assert "connection refused" in error.message


def test_no_details_falls_back_to_status_code():
    error = api_error_from_grpc(plain_error(grpc.StatusCode.NOT_FOUND, "gone"))
    assert (error.status_code, error.code, error.message) == (404, "model_not_found", "gone")


def test_malformed_details_are_ignored():
    metadata = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\xfe not a proto"))
    error = api_error_from_grpc(
        grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), metadata, details="x")
    )
    assert (error.status_code, error.message) == (500, "x")


def test_param_from_loc():
    assert param_from_loc(("body", "temperature")) == "temperature"
    assert (
        param_from_loc(("body", "messages", 0, "content", "part-list", 1))
        == "messages[0].content[1]"
    )
    assert param_from_loc(("body", "stop", "list[str]", 0)) == "stop[0]"
    assert param_from_loc(("body",)) is None


def test_validation_missing_field():
    error = api_error_from_validation(
        [{"type": "missing", "loc": ("body", "messages"), "msg": "x"}]
    )
    assert (error.status_code, error.param, error.code) == (
        400,
        "messages",
        "missing_required_parameter",
    )
