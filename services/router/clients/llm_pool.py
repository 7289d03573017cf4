"""Several LLM replicas behind the one `Llm` port: each new generation goes to the least-loaded
replica that is up, and a replica that fails before the first token is skipped for a while and
the request moves to the next one — so no request that had not started is lost when a replica
dies. A generation that has already streamed text cannot move (the caller has seen part of it).

Replicas are `host:port` addresses, or `dns:///name:port`, re-resolved every `resolve_every_s`
so a Kubernetes headless Service's pods come and go without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from services.common.errors import ResourceExhausted, Unavailable
from services.router.ports import Generated, GenerateRequest, Llm, Message, ModelInfo

log = logging.getLogger(__name__)

T = TypeVar("T")
DNS_SCHEME = "dns:///"


class Channel(Protocol):
    """What the pool needs of a connection to a replica: to close it."""

    async def close(self) -> None: ...


C = TypeVar("C", bound=Channel)


@dataclass
class Replica(Generic[C]):
    address: str
    channel: C
    client: Llm
    inflight: int = 0
    down_until: float = 0.0
    failures: int = 0


def parse_addresses(spec: str) -> list[str]:
    return [a.strip() for a in spec.split(",") if a.strip()]


def _resolve(target: str) -> list[str]:
    """dns:///name:port -> ["10.0.0.5:port", ...] (sorted, de-duplicated); host:port as is."""
    if not target.startswith(DNS_SCHEME):
        return [target]
    host, _, port = target[len(DNS_SCHEME) :].rpartition(":")
    infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = {f"[{i[4][0]}]:{port}" if ":" in str(i[4][0]) else f"{i[4][0]}:{port}" for i in infos}
    return sorted(addresses)


class LlmPool(Generic[C]):
    """`open_channel` connects to a replica's address, `make_client` makes its `Llm` client."""

    dependency = "llm"

    def __init__(
        self,
        targets: Sequence[str],
        open_channel: Callable[[str], C],
        make_client: Callable[[C], Llm],
        cooldown_s: float = 5.0,
        resolve_every_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not targets:
            raise ValueError("at least one LLM address is needed")
        self._targets = list(targets)
        self._open_channel = open_channel
        self._cooldown_s = cooldown_s
        self._resolve_every_s = resolve_every_s
        self._clock = clock
        self._make_client = make_client
        self._replicas: dict[str, Replica[C]] = {}
        self._resolved_at = -float("inf")
        self._turn = itertools.count()
        self._dynamic = any(t.startswith(DNS_SCHEME) for t in self._targets)
        if not self._dynamic:
            self._update(self._targets)

    @property
    def replicas(self) -> list[Replica[C]]:
        return list(self._replicas.values())

    @property
    def refresh_every_s(self) -> float | None:
        """How often the replicas change (a DNS name is resolved again); None: never."""
        return self._resolve_every_s if self._dynamic else None

    async def channels(self) -> dict[str, C]:
        """Each replica's channel by address, resolved anew when due (for the health watch)."""
        await self._refresh()
        return {r.address: r.channel for r in self._replicas.values()}

    def _update(self, addresses: Sequence[str]) -> None:
        for address in addresses:
            if address not in self._replicas:
                channel = self._open_channel(address)
                self._replicas[address] = Replica(address, channel, self._make_client(channel))
        for gone in set(self._replicas) - set(addresses):
            replica = self._replicas.pop(gone)
            if replica.inflight == 0:  # a busy one closes when its streams end (channel GC)
                asyncio.get_running_loop().create_task(replica.channel.close())

    async def _refresh(self) -> None:
        if not self._dynamic or self._clock() - self._resolved_at < self._resolve_every_s:
            return
        self._resolved_at = self._clock()
        try:
            resolved = await asyncio.to_thread(lambda: [a for t in self._targets for a in _resolve(t)])
        except OSError as exc:
            log.warning("cannot resolve LLM replicas %s: %s", self._targets, exc)
            return
        if resolved:
            self._update(resolved)

    async def _pick(self, tried: set[str]) -> Replica[C]:
        """The least-loaded replica not tried yet; replicas in cooldown only when nothing else is left."""
        await self._refresh()
        candidates = [r for r in self._replicas.values() if r.address not in tried]
        if not candidates:
            raise Unavailable(
                "llm", f"no LLM replica could take the request (tried {', '.join(sorted(tried))})"
            )
        now = self._clock()
        up = [r for r in candidates if r.down_until <= now] or candidates
        least = min(r.inflight for r in up)
        tied = [r for r in up if r.inflight == least]
        return tied[next(self._turn) % len(tied)]

    def _failed(self, replica: Replica[C], exc: Exception) -> None:
        replica.failures += 1
        replica.down_until = self._clock() + self._cooldown_s
        log.warning(
            "LLM replica %s failed (%s); trying another for %.0fs", replica.address, exc, self._cooldown_s
        )

    def _succeeded(self, replica: Replica[C]) -> None:
        replica.down_until = 0.0

    async def _any(self, call: Callable[[Llm], Awaitable[T]]) -> T:
        tried: set[str] = set()
        while True:
            replica = await self._pick(tried)
            tried.add(replica.address)
            try:
                result = await call(replica.client)
            except Unavailable as exc:
                self._failed(replica, exc)
                continue
            self._succeeded(replica)
            return result

    async def model_info(self, timeout_s: float) -> ModelInfo:
        # The replicas of one pool serve the same model (one Deployment): any one answers.
        return await self._any(lambda c: c.model_info(timeout_s))

    async def count_tokens(self, messages: Sequence[Message], timeout_s: float) -> int:
        return await self._any(lambda c: c.count_tokens(messages, timeout_s))

    async def count_text_tokens(self, text: str, timeout_s: float) -> int:
        return await self._any(lambda c: c.count_text_tokens(text, timeout_s))

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Generated, None]:
        tried: set[str] = set()
        busy: ResourceExhausted | None = None
        failed: Unavailable | None = None
        while True:
            try:
                replica = await self._pick(tried)
            except Unavailable:
                if busy is not None:  # every replica that answered was full
                    raise busy from None
                if failed is not None and len(tried) == 1:  # the one replica's own words
                    raise failed from None
                raise
            tried.add(replica.address)
            started = False
            replica.inflight += 1
            try:
                stream = replica.client.generate(request)
                async with contextlib.aclosing(stream):
                    async for piece in stream:
                        started = True
                        yield piece
                self._succeeded(replica)
                return
            except Unavailable as exc:
                if started:
                    raise
                self._failed(replica, exc)
                failed = exc
            except ResourceExhausted as exc:
                if started:
                    raise
                busy = exc  # full, not broken: no cooldown, try the next one
            finally:
                replica.inflight -= 1

    async def close(self) -> None:
        for replica in self._replicas.values():
            await replica.channel.close()
