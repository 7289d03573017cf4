"""gRPC channel arguments for every Forge server and client, so that long, quiet streams live.

A Chat stream or a Generate can send nothing for a long while (a long prefill, a judge waiting on
the LLM, an ingest flush). Clients ping such connections so that a dead peer, or a NAT or load
balancer that dropped the flow, is noticed in seconds rather than at the TCP timeout (~15 min).
Servers must accept those pings: by default gRPC core allows one ping per 5 minutes without data
and answers more with GOAWAY ENHANCE_YOUR_CALM "too_many_pings", which fails every call on the
connection.

The server's floor is `grpc.http2.min_ping_interval_without_data_ms` (gRPC core's
GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS). vLLM's gRPC server passes
"grpc.http2.min_recv_ping_interval_without_data_ms" instead, a key gRPC core ignores, so the
5-minute default stays; tests/unit/test_channels.py shows the difference on a real connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio

from services.common.reloading_channel import ReloadingChannel

# Forge's own options are numbers; a channel's may add strings (the TLS target name).
NumericOptions = tuple[tuple[str, int], ...]
ChannelOptions = tuple[tuple[str, int | str], ...]

# Generous but bounded: an oversized message is refused by the transport, not by a crash.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Clients ping a connection that has been quiet this long: well under the idle timeouts of common
# proxies, NATs and load balancers (60 s and up), rare enough to cost nothing.
KEEPALIVE_TIME_MS = 30_000
# A ping not acknowledged within this means the peer or the path is gone: the connection closes
# and its calls fail with UNAVAILABLE instead of hanging.
KEEPALIVE_TIMEOUT_MS = 10_000
# The shortest gap between two pings without data that servers accept. It must not exceed any
# client's KEEPALIVE_TIME_MS (a ping sooner is a strike; the third strike gets GOAWAY): a third of
# ours leaves room for clients tuned lower, and it is the 10 s vLLM's gRPC server means to set.
MIN_PING_INTERVAL_MS = 10_000

_MESSAGE_LIMITS: NumericOptions = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
)

SERVER_OPTIONS: NumericOptions = (
    *_MESSAGE_LIMITS,
    # Servers ping too: a client that vanished mid-stream (its Chat holding an admission slot, its
    # Generate a KV cache) is dropped after KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS.
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Pings on a connection with no call in flight (a client's pooled channel) are fine; without
    # this their floor is 2 hours.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    # Keep pinging through a stream that sends nothing (the default stops after 2 pings).
    ("grpc.http2.max_pings_without_data", 0),
    # Fail to bind a port another process holds instead of silently sharing it.
    ("grpc.so_reuseport", 0),
)

CLIENT_OPTIONS: NumericOptions = (
    *_MESSAGE_LIMITS,
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Channels kept open between calls (the router's to its dependencies, the judge's to the
    # LLM) find a dead peer before the next call does.
    ("grpc.keepalive_permit_without_calls", 1),
    # A call waiting on a long prefill receives no data; the default stops pinging after 2 pings.
    ("grpc.http2.max_pings_without_data", 0),
    # A restarted dependency is seen within seconds: gRPC's default reconnect backoff grows to
    # 120 s, so after a long outage the router would keep answering UNAVAILABLE that long.
    ("grpc.max_reconnect_backoff_ms", 5000),
)


@dataclass(frozen=True)
class Dialer:
    """How this process reaches the mesh's other services: plaintext (no credentials), or mutual
    TLS presenting this service's certificate. With TLS the peer is verified by its service name
    (`llm`, `embed`, ...), which its certificate carries, whatever address is dialled."""

    credentials: grpc.ChannelCredentials | None = None
    # Where fresh credentials come from when the files they were read from change: an asyncio
    # channel then moves its next calls to a new connection (services/common/reloading_channel).
    reload: Callable[[], grpc.ChannelCredentials] | None = None
    watched: tuple[Path, ...] = ()

    @property
    def secure(self) -> bool:
        return self.credentials is not None

    def _options(self, service: str) -> ChannelOptions:
        if self.credentials is None:
            return CLIENT_OPTIONS
        return (*CLIENT_OPTIONS, ("grpc.ssl_target_name_override", service))

    def channel(
        self, address: str, service: str, interceptors: Sequence[aio.ClientInterceptor] | None = None
    ) -> aio.Channel:
        if self.credentials is None:
            return insecure_channel(address, interceptors)
        options = self._options(service)
        if self.reload is None:
            return aio.secure_channel(address, self.credentials, options=options, interceptors=interceptors)
        reload = self.reload
        return ReloadingChannel(
            lambda: aio.secure_channel(address, reload(), options=options, interceptors=interceptors),
            self.watched,
        )

    def blocking_channel(self, address: str, service: str) -> grpc.Channel:
        if self.credentials is None:
            return insecure_blocking_channel(address)
        return grpc.secure_channel(address, self.credentials, options=self._options(service))


PLAINTEXT = Dialer()


def insecure_channel(
    address: str, interceptors: Sequence[aio.ClientInterceptor] | None = None
) -> aio.Channel:
    """An asyncio channel to a Forge service (plaintext: loopback or the appliance's own network)."""
    return aio.insecure_channel(address, options=CLIENT_OPTIONS, interceptors=interceptors)


def insecure_blocking_channel(address: str) -> grpc.Channel:
    """The same for synchronous callers (`forge ingest`/`ask`, the guardrails judge's threads)."""
    return grpc.insecure_channel(address, options=CLIENT_OPTIONS)
