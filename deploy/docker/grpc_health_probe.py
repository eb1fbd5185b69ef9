#!/usr/bin/env python3
"""A gRPC health probe for the Tandem core image (`HEALTHCHECK`, or an exec probe).

Calls `grpc.health.v1.Health/Check` and exits like the `grpc_health_probe` binary does:
0 SERVING, 1 bad arguments, 2 could not connect, 3 the RPC failed (e.g. NOT_FOUND for an
unknown service), 4 the service is not SERVING. Needs only grpcio and grpcio-health-checking
(both in the `core` extra).

    python grpc_health_probe.py --addr 127.0.0.1:50051 --service tandem.v1.Inference

`--addr` defaults to `$TANDEM_HEALTH_ADDR`, else `127.0.0.1:$TANDEM_GRPC_PORT` (50051).
The service "tandem.v1.Inference" is SERVING once the model is loaded and warm and until a
drain begins; "" is SERVING as soon as the port is bound (liveness).
"""

from __future__ import annotations

import argparse
import os
import sys

OK, BAD_ARGS, CONNECT_FAILURE, RPC_FAILURE, UNHEALTHY = 0, 1, 2, 3, 4


def _default_addr() -> str:
    return os.environ.get("TANDEM_HEALTH_ADDR") or (
        "127.0.0.1:" + os.environ.get("TANDEM_GRPC_PORT", "50051"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default=_default_addr(), help="HOST:PORT of the core")
    parser.add_argument("--service", default="tandem.v1.Inference",
                        help='service to check ("" = the server as a whole)')
    parser.add_argument("--connect-timeout", type=float, default=2.0, help="seconds")
    parser.add_argument("--rpc-timeout", type=float, default=2.0, help="seconds")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return OK if exit_.code == 0 else BAD_ARGS

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(args.addr) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
        except grpc.FutureTimeoutError:
            print(f"error: cannot connect to {args.addr} within {args.connect_timeout}s",
                  file=sys.stderr)
            return CONNECT_FAILURE
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=args.service),
                                  timeout=args.rpc_timeout)
        except grpc.RpcError as err:
            print(f"error: health check of {args.service!r} failed: {err.code().name} "
                  f"{err.details()}", file=sys.stderr)
            return RPC_FAILURE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"service {args.service!r} is {status}", file=sys.stderr)
        return UNHEALTHY
    print(f"service {args.service!r} is {status}")
    return OK


if __name__ == "__main__":
    sys.exit(main())
