"""How a client reaches the router: address, API key, tenant, TLS and channel options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

DEFAULT_ADDRESS = "127.0.0.1:50051"
TENANT_HEADER = "x-forge-tenant"
USER_AGENT = "forge-client"

# As Forge's own services dial one another: ping a quiet connection every 30 s (a Chat can send
# nothing through a long prefill; NATs and proxies drop flows idle for 60 s and up) and drop it
# when a ping goes unanswered for 10 s; the router accepts pings every 10 s. Reconnect within 5 s
# of a restarted router rather than gRPC's default backoff of up to 2 minutes.
_MESSAGE_BYTES = 16 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_receive_message_length", _MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_reconnect_backoff_ms", 5000),
    ("grpc.primary_user_agent", USER_AGENT),
)

TlsOption = bool | str | os.PathLike[str] | bytes


@dataclass(frozen=True)
class Connection:
    """Resolved settings of a client."""

    address: str
    api_key: str | None
    tenant: str | None
    root_certificates: bytes | None
    tls: bool
    server_name: str | None = None

    @classmethod
    def resolve(
        cls,
        address: str | None,
        api_key: str | None,
        tenant: str | None,
        tls: TlsOption,
        server_name: str | None,
    ) -> Connection:
        """None for address or api_key means the environment (FORGE_ROUTER, FORGE_API_KEY), then
        the default address / no key. `tls`: False plaintext, True the system's CAs, or the CA
        certificate (a PEM file path, or its bytes) that signed the router's certificate."""
        address = address or os.environ.get("FORGE_ROUTER", "").strip() or DEFAULT_ADDRESS
        if api_key is None:
            api_key = os.environ.get("FORGE_API_KEY", "").strip() or None
        roots: bytes | None = None
        if isinstance(tls, bytes):
            roots = tls
        elif isinstance(tls, str | os.PathLike):
            roots = Path(tls).expanduser().read_bytes()
        return cls(address, api_key or None, tenant or None, roots, tls is not False, server_name)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = []
        if self.api_key:
            pairs.append(("authorization", f"Bearer {self.api_key}"))
        if self.tenant:
            pairs.append((TENANT_HEADER, self.tenant))
        return tuple(pairs)

    def _options(self) -> tuple[tuple[str, int | str], ...]:
        if self.server_name:
            return (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.server_name))
        return CHANNEL_OPTIONS

    def _credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

    def channel(self) -> grpc.Channel:
        if not self.tls:
            return grpc.insecure_channel(self.address, options=self._options())
        return grpc.secure_channel(self.address, self._credentials(), options=self._options())

    def aio_channel(self) -> aio.Channel:
        if not self.tls:
            return aio.insecure_channel(self.address, options=self._options())
        return aio.secure_channel(self.address, self._credentials(), options=self._options())


def local_admin_key(home: str | os.PathLike[str] | None = None) -> str | None:
    """The admin key `forge up` wrote on this machine (FORGE_HOME, default ~/.forge, then
    keys/admin.key), or None. For scripts on the appliance itself; elsewhere pass a key."""
    base = Path(home or os.environ.get("FORGE_HOME") or "~/.forge").expanduser()
    try:
        return (base / "keys" / "admin.key").read_text().strip() or None
    except OSError:
        return None
