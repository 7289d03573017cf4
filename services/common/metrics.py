"""Prometheus metrics every Forge process exposes, and the `/metrics` HTTP endpoint."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

# Latency buckets from sub-millisecond unary calls up to minute-long generations.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

GRPC_STARTED = Counter(
    "forge_grpc_server_started", "RPCs started on the server.", ["grpc_service", "grpc_method"]
)
GRPC_HANDLED = Counter(
    "forge_grpc_server_handled",
    "RPCs completed on the server, by status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_HANDLING_SECONDS = Histogram(
    "forge_grpc_server_handling_seconds",
    "Time from the start of an RPC to its end (the whole stream for streaming RPCs).",
    ["grpc_service", "grpc_method"],
    buckets=RPC_BUCKETS,
)
# Calls the API-key check refused before any work (reason: unauthenticated, permission_denied).
AUTH_REFUSALS = Counter("forge_auth_refusals", "Calls refused by the API-key check.", ["reason"])


@dataclass
class MetricsEndpoint:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(host: str, port: int) -> MetricsEndpoint:
    """Start `/metrics` on host:port (0 picks a free port) in a background thread."""
    server, thread = start_http_server(port, addr=host)
    endpoint = MetricsEndpoint(server, thread)
    log.info("metrics on http://%s:%d/metrics", host, endpoint.port)
    return endpoint
