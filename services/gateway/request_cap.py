"""A cap on the HTTP requests the gateway carries at once (a stream counts until its last byte).

Past the cap a request is answered at once, before its body is read, with 503, `Retry-After` and
OpenAI's error shape, so the openai client backs off and retries as it does for a full
appliance (uvicorn's own `limit_concurrency` answers plain text without a retry delay)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.errors import error_body, retry_headers

# What a refused caller is told to wait: requests in flight end within seconds or stream on.
RETRY_AFTER_S = 1.0


class RequestCap:
    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            await _refuse(send, self.max_requests)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _refuse(send: Send, limit: int) -> None:
    message = (
        f"the gateway is carrying {limit} requests, its limit (FORGE_GATEWAY_MAX_REQUESTS); retry shortly"
    )
    body = json.dumps(error_body(message, "server_error", None, "gateway_busy")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in retry_headers(RETRY_AFTER_S).items()]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
