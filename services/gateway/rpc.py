"""The gateway's gRPC side: the router's public port with the caller's own key, and (for what the
router has no RPC for) embed and llm over the mesh's mutual TLS. Every channel carries the
tracing interceptors, so the HTTP request's trace continues into the mesh."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc
from forge.v1 import (
    embed_pb2,
    embed_pb2_grpc,
    llm_pb2,
    llm_pb2_grpc,
    ops_pb2,
    ops_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from grpc import aio

from forge_client.errors import from_rpc_error
from services.common import telemetry
from services.common.channels import CLIENT_OPTIONS, Dialer
from services.gateway.errors import RpcFailure
from services.gateway.settings import GatewaySettings

# Request headers passed on to the router as call metadata, as they came: the key decides the
# tenant (an admin key may name one), the router checks both.
FORWARDED_HEADERS = ("authorization", "x-forge-tenant")

Metadata = tuple[tuple[str, str], ...]
ChatCall = aio.UnaryStreamCall[router_pb2.ChatRequest, router_pb2.ChatResponse]


def forwarded(headers: Mapping[str, str]) -> Metadata:
    """The caller's credentials as gRPC metadata (header names are lower case in both)."""
    return tuple((name, headers[name]) for name in FORWARDED_HEADERS if name in headers)


def failure_of(err: aio.AioRpcError) -> RpcFailure:
    """A failed call's status with its google.rpc details, read as the SDK reads them."""
    error = from_rpc_error(err)
    return RpcFailure(
        error.code.name,
        error.message or error.code.name,
        error.reason or None,
        error.retry_after_s,
        error.field,
    )


def _router_channel(settings: GatewaySettings) -> aio.Channel:
    interceptors = telemetry.client_interceptors(settings.router_address)
    if not settings.router_ca:
        return aio.insecure_channel(
            settings.router_address, options=CLIENT_OPTIONS, interceptors=interceptors
        )
    credentials = grpc.ssl_channel_credentials(Path(settings.router_ca).expanduser().read_bytes())
    return aio.secure_channel(
        settings.router_address, credentials, options=CLIENT_OPTIONS, interceptors=interceptors
    )


class Upstream:
    """Stubs for what the HTTP API forwards. Each method is one call; errors are AioRpcError."""

    def __init__(self, settings: GatewaySettings, dialer: Dialer) -> None:
        self.settings = settings
        self._channels = [
            _router_channel(settings),
            dialer.channel(
                settings.embed_address,
                "embed",
                interceptors=telemetry.client_interceptors(settings.embed_address),
            ),
            dialer.channel(
                settings.llm_address, "llm", interceptors=telemetry.client_interceptors(settings.llm_address)
            ),
        ]
        router, embed, llm = self._channels
        self.router = router_pb2_grpc.RouterServiceStub(router)
        self.admin = router_pb2_grpc.AdminServiceStub(router)
        self.embed_stub = embed_pb2_grpc.EmbedServiceStub(embed)
        self.embed_ops = ops_pb2_grpc.OpsServiceStub(embed)
        self.llm = llm_pb2_grpc.LlmServiceStub(llm)

    def chat(self, request: router_pb2.ChatRequest, metadata: Metadata) -> ChatCall:
        return self.router.Chat(request, metadata=metadata, timeout=self.settings.chat_timeout_s)

    async def check_key(self, metadata: Metadata) -> None:
        """The router's verdict on the caller's key (UNAUTHENTICATED / PERMISSION_DENIED), through
        the cheapest call a tenant key may make: listing its own collections."""
        await self.router.ListCollections(
            router_pb2.ListCollectionsRequest(), metadata=metadata, timeout=self.settings.call_timeout_s
        )

    async def embed(
        self, texts: Iterable[str], kind: embed_pb2.EmbedKind.ValueType
    ) -> embed_pb2.EmbedResponse:
        return await self.embed_stub.Embed(
            embed_pb2.EmbedRequest(texts=list(texts), kind=kind), timeout=self.settings.call_timeout_s
        )

    async def llm_model(self) -> llm_pb2.GetModelInfoResponse:
        return await self.llm.GetModelInfo(
            llm_pb2.GetModelInfoRequest(), timeout=self.settings.call_timeout_s
        )

    async def embed_info(self) -> ops_pb2.GetInfoResponse:
        return await self.embed_ops.GetInfo(ops_pb2.GetInfoRequest(), timeout=self.settings.call_timeout_s)

    async def gpu_stats(self, metadata: Metadata) -> router_pb2.AdminServiceGetGpuStatsResponse:
        return await self.admin.GetGpuStats(
            router_pb2.AdminServiceGetGpuStatsRequest(),
            metadata=metadata,
            timeout=self.settings.call_timeout_s,
        )

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
