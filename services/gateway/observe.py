"""ASGI middleware around every HTTP request: one SERVER span (child of the caller's W3C
`traceparent`, current while the handler runs, so the gRPC calls it makes continue the trace into
the mesh), the trace id in an `x-forge-trace-id` response header, the request metrics, and the
cap on the request body."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import metrics

ROUTES = frozenset({"/v1/chat/completions", "/v1/embeddings", "/v1/models", "/v1/gpu/stats"})
TRACE_ID_HEADER = "x-forge-trace-id"
_TRACER = "forge.http.server"


class BodyTooLarge(Exception):
    """The request body passed the gateway's cap (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


def _capped(receive: Receive, limit: int) -> Receive:
    """`receive` that refuses a body growing past `limit` (a chunked body has no Content-Length)."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return capped


class Observe:
    def __init__(self, app: ASGIApp, max_body_bytes: int, tracer_provider: Any = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._tracer = trace.get_tracer(_TRACER, tracer_provider=tracer_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        route = path if path in ROUTES else "other"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(headers)
        span = self._tracer.start_span(
            f"{method} {path}" if path in ROUTES else method,  # unknown paths: no cardinality
            parent,
            SpanKind.SERVER,
            {"http.request.method": method, "url.path": path, "http.route": route},
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        trace_id = format(span.get_span_context().trace_id, "032x").encode()
        status = 0
        started = time.monotonic()

        async def traced_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", ()), (TRACE_ID_HEADER.encode(), trace_id)],
                }
            await send(message)

        try:
            await self.app(scope, _capped(receive, self.max_body_bytes), traced_send)
        except BaseException as exc:
            status = status or 500
            span.record_exception(exc)
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            metrics.REQUESTS.labels(route, str(status)).inc()
            metrics.REQUEST_SECONDS.labels(route).observe(time.monotonic() - started)
            otel_context.detach(token)
            span.end()
