#!/usr/bin/env python3
"""Container health probe for a Forge service: exit 0 when grpc.health.v1 answers SERVING.

    forge-healthcheck [--live] [PORT|HOST:PORT] [SERVICE]

PORT defaults to $FORGE_HEALTHCHECK_PORT (the image sets 50051, the router); HOST to 127.0.0.1.
SERVICE is the health service name ("" = the whole server, which every Forge service sets).
Any other answer, an error or a timeout ($FORGE_HEALTHCHECK_TIMEOUT_S, default 3 s) exits 1,
which is what Docker's HEALTHCHECK and compose's healthcheck expect: readiness.

--live asks only whether the process answers at all (liveness): any health status passes, since
NOT_SERVING is a live process loading its model, draining, or waiting for a dependency; only no
answer within the timeout (a frozen or hung process) or a refused connection exits 1. A service
whose engine or model died does not need this probe: it exits with code 3 by itself.

llm, embed and guardrails speak only mutual TLS: where the mesh's client certificate is at hand
($FORGE_TLS_DIR, else $FORGE_HOME/tls: ca.crt, client.crt, client.key) the probe presents it,
and falls back to plaintext for a port that does not speak TLS (the router's public port).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# A proxy in the container's environment must not capture a loopback health check.
OPTIONS = [("grpc.enable_http_proxy", 0)]


def mesh_credentials() -> grpc.ChannelCredentials | None:
    """The operators' client certificate of the mesh, when this container has it."""
    if os.environ.get("FORGE_INTERNAL_TLS") == "off":
        return None
    home = Path(os.environ.get("FORGE_HOME", "~/.forge")).expanduser()
    tls = Path(os.environ["FORGE_TLS_DIR"]) if os.environ.get("FORGE_TLS_DIR") else home / "tls"
    files = [tls / "ca.crt", tls / "client.key", tls / "client.crt"]
    if not all(f.is_file() for f in files):
        return None
    ca, key, cert = (f.read_bytes() for f in files)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def check(channel: grpc.Channel, service: str, timeout_s: float) -> health_pb2.HealthCheckResponse:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
    )


def main(argv: list[str]) -> int:
    live = "--live" in argv[1:]
    args = [argv[0], *(a for a in argv[1:] if a != "--live")]
    where = args[1] if len(args) > 1 else os.environ.get("FORGE_HEALTHCHECK_PORT", "50051")
    service = args[2] if len(args) > 2 else ""
    target = where if ":" in where else f"127.0.0.1:{where}"
    timeout_s = float(os.environ.get("FORGE_HEALTHCHECK_TIMEOUT_S", "3"))
    credentials = mesh_credentials()
    answer = None
    if credentials is not None:
        with grpc.secure_channel(target, credentials, options=OPTIONS) as channel:
            try:
                answer = check(channel, service, timeout_s / 2)
            except grpc.RpcError:
                answer = None  # not a TLS port: try plaintext
    if answer is None:
        with grpc.insecure_channel(target, options=OPTIONS) as channel:
            try:
                answer = check(channel, service, timeout_s / 2 if credentials else timeout_s)
            except grpc.RpcError as exc:
                print(f"{target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{target} {service or '(server)'}: {status}" + (" (answering: live)" if live else ""))
    return 0 if live or answer.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
