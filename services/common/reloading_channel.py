"""A client channel whose TLS files may change under it: when the certificate, key or CA bundle
it was made from changes (or on SIGHUP), the next call goes out on a new channel made from the
new files, so a rotated certificate or CA needs no restart of the client either.

gRPC's channel credentials are fixed when a channel is made; this wraps one channel at a time
and resolves the channel per call. Calls in flight finish on the channel they started on, which
is closed once no call can still be running on it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

log = logging.getLogger(__name__)

# How often a call may look at the files (a stat each); a SIGHUP makes the next call look.
RECHECK_S = 1.0
# A replaced channel is closed after this: longer than any call the mesh makes (generation is
# bounded by 600 s).
RETIRE_AFTER_S = 900.0

_reload_generation = 0


def request_reload() -> None:
    """SIGHUP: every reloading channel reads its files again before its next call."""
    global _reload_generation
    _reload_generation += 1


def files_stamp(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    """(mtime, size) of each file, (0, 0) for a missing one: what tells a rewritten TLS file."""
    stamps = []
    for path in paths:
        try:
            st = path.stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamps.append((0, 0))
    return tuple(stamps)


class _PerCall:
    """A multicallable that takes the owner's current channel on every call."""

    def __init__(self, owner: ReloadingChannel, kind: str, method: str, kwargs: dict[str, Any]) -> None:
        self._owner, self._kind, self._method, self._kwargs = owner, kind, method, kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel = self._owner.current()
        return getattr(channel, self._kind)(self._method, **self._kwargs)(*args, **kwargs)


class ReloadingChannel(aio.Channel):
    def __init__(
        self, open_channel: Callable[[], aio.Channel], watched: Sequence[Path], recheck_s: float = RECHECK_S
    ) -> None:
        self._open = open_channel
        self._watched = tuple(watched)
        self._recheck_s = recheck_s
        self._stamp = files_stamp(self._watched)
        self._generation = _reload_generation
        self._checked = time.monotonic()
        self._channel = open_channel()
        self._retiring: dict[aio.Channel, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def current(self) -> aio.Channel:
        now = time.monotonic()
        if self._generation == _reload_generation and now - self._checked < self._recheck_s:
            return self._channel
        self._checked, forced = now, self._generation != _reload_generation
        self._generation = _reload_generation
        stamp = files_stamp(self._watched)
        if stamp == self._stamp and not forced:
            return self._channel
        try:
            fresh = self._open()
        except (OSError, ValueError) as exc:  # half a rotation: keep the channel that works
            log.error("TLS files changed but cannot be used (keeping the current channel): %s", exc)
            return self._channel
        self._stamp = stamp
        old, self._channel = self._channel, fresh
        log.info("TLS files changed: new connections use them (%s)", ", ".join(map(str, self._watched)))
        self._retiring[old] = asyncio.get_running_loop().call_later(RETIRE_AFTER_S, self._retire, old)
        return fresh

    def _retire(self, channel: aio.Channel) -> None:
        del self._retiring[channel]
        self._closing.add(task := asyncio.get_running_loop().create_task(channel.close()))
        task.add_done_callback(self._closing.discard)

    def unary_unary(self, method: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return _PerCall(self, "unary_unary", method, kwargs)

    def unary_stream(self, method: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return _PerCall(self, "unary_stream", method, kwargs)

    def stream_unary(self, method: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return _PerCall(self, "stream_unary", method, kwargs)

    def stream_stream(self, method: str, **kwargs: Any) -> Any:  # type: ignore[override]
        return _PerCall(self, "stream_stream", method, kwargs)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.current().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        retiring, self._retiring = self._retiring, {}
        for channel, handle in retiring.items():
            handle.cancel()
            await channel.close(grace)
        await self._channel.close(grace)

    async def __aenter__(self) -> ReloadingChannel:
        return self

    async def __aexit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        await self.close(None)
