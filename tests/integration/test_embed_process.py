"""`forge serve embed` as a real process: health through its lifecycle and a graceful SIGTERM drain."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import grpc
import pytest
from forge.v1 import embed_pb2, embed_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import ServiceProcess, metric_value, scrape, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def embed_process() -> AsyncIterator[ServiceProcess]:
    # A small batch size makes each call several model runs, so calls are surely in flight at SIGTERM.
    process = ServiceProcess("embed", "--grace", "60", env={"FORGE_EMBED_MAX_BATCH_SIZE": "8"})
    yield process
    await process.kill()


async def watch_health(process: ServiceProcess, seen: list[int]) -> None:
    async with process.channel() as channel:
        async for reply in health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="")
        ):
            seen.append(reply.status)


async def test_health_then_sigterm_drains_in_flight_calls(embed_process: ServiceProcess) -> None:
    listening = await embed_process.start()
    metrics_url = f"http://127.0.0.1:{listening['metrics_port']}/metrics"
    seen: list[int] = []
    watcher = asyncio.create_task(watch_health(embed_process, seen))
    await wait_until(lambda: len(seen) > 0, 30, "first health status")
    assert seen[0] == NOT_SERVING  # listening, model not loaded yet (importing torch takes seconds)
    await embed_process.next_event("serving")
    await wait_until(lambda: SERVING in seen, 30, "SERVING on the health watch")

    async with embed_process.channel() as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        texts = [f"document {i} about graceful shutdown of gRPC services" for i in range(64)]
        calls = [asyncio.ensure_future(stub.Embed(embed_pb2.EmbedRequest(texts=texts))) for _ in range(4)]
        await wait_until(
            lambda: (
                metric_value(scrape(metrics_url), "forge_grpc_server_started_total", {"grpc_method": "Embed"})
                >= 4
            ),
            30,
            "all four calls to reach the server",
        )
        embed_process.signal(signal.SIGTERM)
        await embed_process.next_event("draining")
        await wait_until(lambda: NOT_SERVING in seen[seen.index(SERVING) :], 30, "NOT_SERVING during drain")
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.Embed(embed_pb2.EmbedRequest(texts=["too late"]))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        replies = await asyncio.gather(*calls)
    assert all(len(r.embeddings) == 64 for r in replies)  # every in-flight call finished
    stopped = await embed_process.next_event("stopped")
    assert stopped["exit_code"] == 0
    assert await embed_process.wait() == 0
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)


async def test_calls_while_loading_are_unavailable_not_hung(embed_process: ServiceProcess) -> None:
    await embed_process.start()
    async with embed_process.channel() as channel:
        with pytest.raises(aio.AioRpcError) as early:
            await embed_pb2_grpc.EmbedServiceStub(channel).Embed(
                embed_pb2.EmbedRequest(texts=["hi"]), timeout=10
            )
    assert early.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "embed model" in (early.value.details() or "")
    embed_process.signal(signal.SIGTERM)
    assert await embed_process.wait() == 0
