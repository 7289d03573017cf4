"""Keepalive between the server kit and Forge's clients, on a real loopback connection.

A call that sends nothing for a while (a long prefill) is kept alive by the client's pings; the
server kit must take a ping as often as clients send one, or gRPC core answers with GOAWAY
"too_many_pings" and the call dies. The production intervals (seconds) are scaled down here to
PING_MS; what is tested is the relation (client keepalive >= server floor) and the option names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import grpc
import pytest
from grpc import aio

from services.common.channels import CLIENT_OPTIONS, SERVER_OPTIONS, NumericOptions, insecure_channel
from services.common.config import load_profile
from services.common.server import ForgeServer, ServerOptions

KEEPALIVE_TIME = "grpc.keepalive_time_ms"
MIN_PING_INTERVAL = "grpc.http2.min_ping_interval_without_data_ms"
# What vLLM's gRPC server passes for MIN_PING_INTERVAL: not a gRPC core channel argument.
VLLM_MIN_PING_INTERVAL = "grpc.http2.min_recv_ping_interval_without_data_ms"

# gRPC core sends at most one ping a second, whatever keepalive_time_ms says.
PING_MS = 1000
# The call is quiet for 6 s (5 client pings). Against gRPC's default floor the 2nd ping is the 1st strike
# and the 4th ping (the 3rd strike) gets GOAWAY, about 4 s in.
HOLD_S = 6 * PING_MS / 1000
SERVICE = "forge.test.Quiet"
METHOD = f"/{SERVICE}/Hold"


def with_values(
    options: NumericOptions, values: Mapping[str, int], rename: Mapping[str, str] | None = None
) -> NumericOptions:
    """`options` with some values changed and some keys renamed."""
    names = rename or {}
    return tuple((names.get(key, key), values.get(key, value)) for key, value in options)


class QuietApp:
    """A service whose one method answers after HOLD_S and sends nothing before: the connection
    carries only the client's pings meanwhile."""

    name = "quiet"

    @property
    def grpc_service_names(self) -> Sequence[str]:
        return [SERVICE]

    def register(self, server: aio.Server) -> None:
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(self.hold)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Hold": handler})])

    async def hold(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        await asyncio.sleep(HOLD_S)  # the slow work, not a synchronisation point of the test
        return b"held"

    async def load(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def settings_summary(self) -> Mapping[str, str]:
        return {}

    def compute_device(self) -> str:
        return "cpu"


@asynccontextmanager
async def quiet_server(channel_args: NumericOptions) -> AsyncIterator[ForgeServer]:
    """The server kit on a loopback port 0 with the given channel arguments."""
    options = ServerOptions(port=0, gpu_watch_interval_s=None, channel_args=channel_args)
    server = ForgeServer(QuietApp(), load_profile("cpu", environ={}), options)
    await server.start()
    try:
        await server.load_and_serve()
        yield server
    finally:
        await server.stop()


async def hold_call(address: str) -> bytes:
    """One quiet call from a client with Forge's options, pinging every PING_MS."""
    client_options = with_values(CLIENT_OPTIONS, {KEEPALIVE_TIME: PING_MS})
    async with aio.insecure_channel(address, options=client_options) as channel:
        hold: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        return await hold(b"", timeout=30)


def test_clients_ping_no_faster_than_servers_allow() -> None:
    server, client = dict(SERVER_OPTIONS), dict(CLIENT_OPTIONS)
    assert client[KEEPALIVE_TIME] >= server[MIN_PING_INTERVAL]
    # Clients ping idle channels too, so servers must not count those pings as strikes.
    assert client["grpc.keepalive_permit_without_calls"] == server["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.http2.max_pings_without_data"] == 0
    for limit in ("grpc.max_receive_message_length", "grpc.max_send_message_length"):
        assert client[limit] == server[limit]
    assert VLLM_MIN_PING_INTERVAL not in server


def test_the_server_kit_uses_the_server_options() -> None:
    assert ServerOptions().channel_args == SERVER_OPTIONS


@pytest.mark.slow
async def test_a_client_pinging_at_the_servers_floor_keeps_its_quiet_call() -> None:
    async with quiet_server(with_values(SERVER_OPTIONS, {MIN_PING_INTERVAL: PING_MS})) as server:
        assert await hold_call(server.address) == b"held"


@pytest.mark.slow
async def test_vllms_option_name_leaves_grpcs_default_floor_and_the_call_dies() -> None:
    """The control: the same client against a server given vLLM's key gets GOAWAY, so the test
    above does exercise pings the server would otherwise refuse."""
    server_args = with_values(
        SERVER_OPTIONS, {MIN_PING_INTERVAL: PING_MS}, rename={MIN_PING_INTERVAL: VLLM_MIN_PING_INTERVAL}
    )
    async with quiet_server(server_args) as server:
        with pytest.raises(aio.AioRpcError) as failure:
            await hold_call(server.address)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert failure.value.details() == "Too many pings"  # GOAWAY ENHANCE_YOUR_CALM "too_many_pings"


async def test_insecure_channel_reaches_a_kit_server() -> None:
    async with quiet_server(SERVER_OPTIONS) as server, insecure_channel(server.address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
