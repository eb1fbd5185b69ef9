"""Typed errors of the core and their gRPC form (status code + google.rpc details).

Owns: the core's half of the error table (docs/architecture.md). Code raises a `TandemError`
subclass; the servicer turns it into `grpc.Status` with `ErrorInfo{domain: "tandem.v1", reason}`,
`BadRequest.FieldViolation` naming the parameter and `RetryInfo` for back-pressure.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "tandem.v1"


class TandemError(Exception):
    """An error with a gRPC status; subclasses fix the code and reason."""

    code = grpc.StatusCode.INTERNAL
    reason: str | None = None

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after_s: float | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param  # the offending request parameter, if any
        self.retry_after_s = retry_after_s  # when to retry (back-pressure only)
        self.metadata = metadata or {}  # extra ErrorInfo metadata

    def to_grpc_status(self) -> grpc.Status:
        details = []
        if self.reason:
            details.append(error_details_pb2.ErrorInfo(
                reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata))
        if self.param:
            details.append(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=self.param,
                                                            description=self.message)]))
        if self.retry_after_s is not None:
            details.append(error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=int(self.retry_after_s))))
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return rpc_status.to_status(status)


class InvalidParameter(TandemError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_PARAMETER"


class ContextLengthExceeded(TandemError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "CONTEXT_LENGTH_EXCEEDED"


class Unsupported(TandemError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "UNSUPPORTED"


class ModelNotFound(TandemError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "MODEL_NOT_FOUND"


class Overloaded(TandemError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"


class Unavailable(TandemError):
    code = grpc.StatusCode.UNAVAILABLE
