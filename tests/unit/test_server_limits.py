"""The server kit refuses calls beyond `maximum_concurrent_rpcs` (FORGE_MAX_CONCURRENT_RPCS) with
RESOURCE_EXHAUSTED before any handler runs, and takes calls again once some end: a flood of
long streams cannot pile up without bound in one process. On a real loopback server."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import load_profile
from services.common.server import ForgeServer, ServerOptions
from services.common.settings import ForgeSettings
from tests.unit.test_channels import QuietApp


async def test_calls_beyond_the_limit_are_resource_exhausted_until_one_ends() -> None:
    options = ServerOptions(port=0, gpu_watch_interval_s=None, maximum_concurrent_rpcs=2)
    server = ForgeServer(QuietApp(), load_profile("cpu", environ={}), options)
    await server.start()
    try:
        await server.load_and_serve()
        async with aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
            for watch in watches:  # both streams are running on the server
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(aio.AioRpcError) as refused:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            watches[0].cancel()
            # The slot frees once the server has seen the cancellation: poll as a client retries.
            answers: list[int] = []

            async def check() -> None:
                try:
                    answers.append((await health.Check(health_pb2.HealthCheckRequest(), timeout=10)).status)
                except aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

            deadline = time.monotonic() + 10
            while not answers and time.monotonic() < deadline:
                await check()
                await asyncio.sleep(0.01)
            assert answers == [health_pb2.HealthCheckResponse.SERVING]
            watches[1].cancel()
    finally:
        await server.stop()


def test_the_limit_is_a_setting() -> None:
    assert ForgeSettings().max_concurrent_rpcs == 512
    assert ForgeSettings(max_concurrent_rpcs=8).max_concurrent_rpcs == 8
