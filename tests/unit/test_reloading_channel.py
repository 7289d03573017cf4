"""Clients pick up rotated TLS files too: the router's channel to a service moves its next calls to
a new connection made from the new certificate and CA, without a restart. On a real loopback
server speaking mutual TLS; the mesh is moved to a new CA and the server restarted on it (so no
connection made with the old files survives)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import reloading_channel
from services.common.config import load_profile
from services.common.credentials import dialer_for, server_security
from services.common.security.settings import SecuritySettings
from services.common.security.tls import ensure_tls_dir
from services.common.server import ForgeServer, ServerOptions
from tests.unit.test_channels import QuietApp

SERVING = health_pb2.HealthCheckResponse.SERVING


async def status(channel: aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(reply.status)


async def started(settings: SecuritySettings, home: Path, port: int = 0) -> ForgeServer:
    security = server_security("embed", settings, home)
    options = ServerOptions(port=port, gpu_watch_interval_s=None, security=security)
    server = ForgeServer(QuietApp(), load_profile("cpu", environ={}), options)
    await server.start()
    await server.load_and_serve()
    return server


@pytest.mark.parametrize("how", ["file change", "SIGHUP"])
async def test_a_running_client_follows_the_mesh_to_a_new_ca(tmp_path: Path, how: str) -> None:
    home = tmp_path / "home"
    tls, _ = ensure_tls_dir(home / "tls")
    settings = SecuritySettings(tls_dir=str(tls.path))
    server = await started(settings, home)
    dialer = dialer_for("router", settings, home)
    channel = dialer.channel(server.address, "embed")
    try:
        assert await status(channel) == SERVING
        rotated, _ = ensure_tls_dir(tmp_path / "rotated")
        for name in ("ca.crt", "embed.crt", "embed.key", "router.crt", "router.key"):
            shutil.copy(rotated.path / name, tls.path / f".{name}.new")
            (tls.path / f".{name}.new").replace(tls.path / name)
        port = server.port
        await server.stop()
        server = await started(settings, home, port)  # only connections made with the new files
        # A channel that keeps the old files cannot connect any more.
        assert dialer.credentials is not None
        by_name = (("grpc.ssl_target_name_override", "embed"),)
        async with aio.secure_channel(server.address, dialer.credentials, options=by_name) as stale:
            with pytest.raises(aio.AioRpcError) as refused:
                await status(stale)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        if how == "SIGHUP":
            reloading_channel.request_reload()
            assert await status(channel) == SERVING  # the very next call
        else:
            answers: list[int] = []
            deadline = time.monotonic() + 5  # the channel looks at its files once a second
            while not answers and time.monotonic() < deadline:
                try:
                    answers.append(await status(channel))
                except aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.1)
            assert answers == [SERVING]
    finally:
        await channel.close()
        await server.stop()
