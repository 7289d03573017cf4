"""Wires the gateway into the server kit: its gRPC port serves only health, ops and reflection (so
`forge up` and Kubernetes probe it like any service), and its load() starts uvicorn in the same
event loop. It reports SERVING once the HTTP port is bound; the router's own state shows in each
call's answer (503 while the router is down), not in the gateway's health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator, Mapping, Sequence

import uvicorn
from grpc import aio

from services.common.channels import PLAINTEXT, Dialer
from services.common.server import announce
from services.gateway.http_api import create_app
from services.gateway.rpc import Upstream
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn as a guest in a Forge process: the server kit owns SIGTERM/SIGINT (its drain stops
    this server), and `bound` is set once the port accepts connections."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.bound = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.bound.set()


def bind(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, bound here so a taken port is an OSError at load (a failed
    start, exit 1), and port 0 yields the port the kernel chose."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family)


class GatewayApp:
    name = "gateway"

    def __init__(self, settings: GatewaySettings | None = None, dialer: Dialer = PLAINTEXT) -> None:
        self.settings = settings or GatewaySettings()
        self.dialer = dialer
        self.http_port = 0
        self._upstream: Upstream | None = None
        self._server: _EmbeddedServer | None = None
        self._serving: asyncio.Task[None] | None = None

    @property
    def grpc_service_names(self) -> Sequence[str]:
        return []

    @property
    def http_address(self) -> str:
        return f"http://{self.settings.http_host}:{self.http_port}"

    def register(self, server: aio.Server) -> None:
        """No gRPC service of its own: the kit's health, ops and reflection only."""

    async def load(self) -> None:
        s = self.settings
        sock = bind(s.http_host, s.http_port)
        self.http_port = int(sock.getsockname()[1])
        self._upstream = Upstream(s, self.dialer)
        config = uvicorn.Config(
            create_app(self._upstream, s.max_body_bytes, s.max_requests),
            lifespan="off",
            ws="none",
            log_config=None,  # the process's logging (configure_logging) applies
            access_log=False,  # requests are counted and traced instead (observe.py)
            server_header=False,
            timeout_graceful_shutdown=int(s.drain_grace_s),
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._serving = asyncio.create_task(server.serve(sockets=[sock]))
        bound = asyncio.create_task(server.bound.wait())
        await asyncio.wait({self._serving, bound}, return_when=asyncio.FIRST_COMPLETED)
        if not server.bound.is_set():
            bound.cancel()
            await self._serving  # raises what stopped it
            raise RuntimeError("the HTTP server stopped before it was listening")
        log.info("OpenAI-compatible HTTP API on %s (router %s)", self.http_address, s.router_address)
        announce("http_listening", service=self.name, address=self.http_address, port=self.http_port)

    async def close(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True  # uvicorn lets streams in flight finish within the grace
            await self._serving
        if self._upstream is not None:
            await self._upstream.close()

    def compute_device(self) -> str:
        return "cpu"

    def settings_summary(self) -> Mapping[str, str]:
        s = self.settings
        return {
            "http": self.http_address,
            "router_address": s.router_address,
            "router_transport": "tls" if s.router_ca else "plaintext",
            "embed_address": s.embed_address,
            "llm_address": s.llm_address,
            "chat_timeout_s": f"{s.chat_timeout_s:g}",
            "max_body_bytes": str(s.max_body_bytes),
            "max_requests": str(s.max_requests),
        }
