"""The gateway's cap on requests in flight: past it, 503 with Retry-After in OpenAI's shape."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from services.gateway.request_cap import RequestCap


class HeldApp:
    """Answers 200 once `release` is set; `entered` counts requests inside."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered.set()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def test_a_request_past_the_cap_is_refused_with_a_retry_delay_and_the_cap_frees_again() -> None:
    held = HeldApp()
    cap = RequestCap(held, max_requests=1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cap), base_url="http://gw") as http:
        first = asyncio.create_task(http.post("/v1/chat/completions", json={}))
        await held.entered.wait()

        refused = await http.post("/v1/chat/completions", json={})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1" and refused.headers["retry-after-ms"] == "1000"
        error = refused.json()["error"]
        assert error["type"] == "server_error" and error["code"] == "gateway_busy"
        assert "1 requests" in error["message"]

        held.release.set()
        assert (await first).status_code == 200
        assert cap.in_flight == 0
        assert (await http.get("/v1/models")).status_code == 200  # room again


async def test_a_failing_request_gives_its_place_back() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("handler bug")

    cap = RequestCap(failing, max_requests=1)
    transport = httpx.ASGITransport(app=cap, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        for _ in range(3):
            assert (await http.get("/v1/models")).status_code == 500
    assert cap.in_flight == 0
