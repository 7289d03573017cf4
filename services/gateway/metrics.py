"""Prometheus metrics of the gateway's HTTP API (its gRPC port serves only health and ops)."""

from prometheus_client import Counter, Histogram

from services.common.metrics import RPC_BUCKETS

REQUESTS = Counter(
    "forge_gateway_http_requests",
    "HTTP requests answered, by route and status code (a stream counts once, with its first status).",
    ["route", "status"],
)
REQUEST_SECONDS = Histogram(
    "forge_gateway_http_request_duration_seconds",
    "Time from a request's arrival to its last byte (the whole stream for SSE), by route.",
    ["route"],
    buckets=RPC_BUCKETS,
)
STREAM_ERRORS = Counter(
    "forge_gateway_stream_errors",
    "Chat streams that ended with an error event after the response had started, by gRPC code.",
    ["code"],
)
