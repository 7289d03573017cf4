#!/usr/bin/env python3
"""Container health probe for a Forge service: exit 0 when grpc.health.v1 answers SERVING.

    forge-healthcheck [PORT|HOST:PORT] [SERVICE]

PORT defaults to $FORGE_HEALTHCHECK_PORT (the image sets 50051, the router); HOST to 127.0.0.1.
SERVICE is the health service name ("" = the whole server, which every Forge service sets).
Any other answer, an error or a timeout ($FORGE_HEALTHCHECK_TIMEOUT_S, default 3 s) exits 1,
which is what Docker's HEALTHCHECK and compose's healthcheck expect.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str]) -> int:
    where = argv[1] if len(argv) > 1 else os.environ.get("FORGE_HEALTHCHECK_PORT", "50051")
    service = argv[2] if len(argv) > 2 else ""
    target = where if ":" in where else f"127.0.0.1:{where}"
    timeout_s = float(os.environ.get("FORGE_HEALTHCHECK_TIMEOUT_S", "3"))
    # A proxy in the container's environment must not capture a loopback health check.
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{target} {service or '(server)'}: {status}")
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
