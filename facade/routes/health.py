"""GET /health (the facade process is alive) and GET /ready (the core behind it serves).

`/ready` asks the core's `grpc.health.v1.Health/Check` for service "tandem.v1.Inference"; any
answer but SERVING, or no answer, is a 503 in the error envelope.

The facade needs no `grpcio-health-checking` for this: `HealthCheckRequest {string service = 1}`
and `HealthCheckResponse {ServingStatus status = 1}` are wire-identical to protobuf's own
`StringValue` and `Int32Value` (a string and a varint in field 1), so those encode the call.
"""

from __future__ import annotations

import grpc
from fastapi import APIRouter
from google.protobuf import wrappers_pb2

from facade.dependencies import CoreChannel, RequestId, Settings
from facade.errors import ApiError, service_unavailable
from facade.openapi import READY_RESPONSES, ProbeStatus

router = APIRouter(tags=["health"])

# The health-service name the core reports readiness under.
INFERENCE_SERVICE = "tandem.v1.Inference"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
# grpc.health.v1.HealthCheckResponse.ServingStatus values.
SERVING_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1


def _not_ready(reason: str) -> ApiError:
    return service_unavailable(f"The inference core is not ready: {reason}.")


async def core_serving_status(channel: grpc.aio.Channel, timeout_s: float, request_id: str) -> int:
    """The core's ServingStatus for INFERENCE_SERVICE; raises AioRpcError when unreachable."""
    check = channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.Int32Value.FromString,
    )
    response = await check(
        wrappers_pb2.StringValue(value=INFERENCE_SERVICE),
        metadata=(("x-request-id", request_id),),
        timeout=timeout_s,
    )
    return response.value


@router.get("/health", response_model=ProbeStatus)
async def health() -> dict[str, str]:
    """Liveness: the facade answers; says nothing about the core."""
    return {"status": "ok"}


@router.get("/ready", response_model=ProbeStatus, responses=READY_RESPONSES)
async def ready(channel: CoreChannel, settings: Settings, request_id: RequestId) -> dict[str, str]:
    """Readiness: 200 when the core reports SERVING, else 503."""
    try:
        status = await core_serving_status(channel, settings.health_timeout_s, request_id)
    except grpc.aio.AioRpcError as error:
        raise _not_ready(f"{error.code().name}: {error.details()}") from None
    if status != SERVING:
        raise _not_ready(f"status {SERVING_STATUS_NAMES.get(status, status)}")
    return {"status": "ready"}
