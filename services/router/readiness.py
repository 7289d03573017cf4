"""The router's readiness: NOT_SERVING until every dependency it needs has answered SERVING and
Milvus is open; afterwards each watched dependency's own health shows beside the router's (health
entries `dependency/<name>`, the gauge forge_router_dependency_up, OpsService.GetInfo) while the
router stays SERVING and serves what it can (the degrade rules say what a call does without one).

An LLM with several replicas is up while at least one replica is. No gRPC here: how a service's
health is watched is the adapter's (`clients.services.watch_health`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

MILVUS = "milvus"
# While waiting, the log says again what for this often (a start can take minutes).
REMIND_EVERY_S = 30.0
NOT_ANSWERED = "not answered yet"

C = TypeVar("C")
# What a watch reports of one source: whether it is SERVING, and what was heard, in words.
Report = Callable[[bool, str], None]
Watch = Callable[[C, Report], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class DependencyState:
    serving: bool
    detail: str


class Readiness:
    """`watched`: dependencies whose health is followed (each has an entry and a gauge);
    `required`: those the router waits for before it serves (Milvus always)."""

    def __init__(
        self,
        watched: Sequence[str],
        required: Sequence[str],
        on_change: Callable[[str, bool], None] = lambda dependency, up: None,
    ) -> None:
        self.watched = tuple(watched)
        self.required = (*required, MILVUS)
        self._on_change = on_change
        self._sources: dict[str, dict[str, DependencyState]] = {d: {} for d in (*self.watched, MILVUS)}
        self._up = dict.fromkeys(self._sources, False)
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def is_up(self, dependency: str) -> bool:
        return self._up[dependency]

    def announce(self) -> None:
        """Publish every watched dependency's state as it stands (at start: all down)."""
        for dependency in self.watched:
            self._on_change(dependency, self._up[dependency])

    def report(self, dependency: str, source: str, serving: bool, detail: str) -> None:
        """What one source of `dependency` (an LLM replica; the service itself) answered."""
        self._sources[dependency][source] = DependencyState(serving, detail)
        self._settle(dependency)

    def forget(self, dependency: str, source: str) -> None:
        """A source that is no longer one (a replica gone from DNS)."""
        self._sources[dependency].pop(source, None)
        self._settle(dependency)

    def opened(self, dependency: str = MILVUS) -> None:
        self.report(dependency, dependency, True, "open")

    def _settle(self, dependency: str) -> None:
        up = any(s.serving for s in self._sources[dependency].values())
        if up == self._up[dependency]:
            return
        self._up[dependency] = up
        if dependency in self.watched:
            self._on_change(dependency, up)
        if self.ready:
            if up:
                log.info("dependency %s is serving again", dependency)
            else:
                log.warning(
                    "dependency %s is down (%s); the router serves what it can without it",
                    dependency,
                    self.dependencies()[dependency].detail,
                )
            return
        self._changed.set()
        if not self.waiting_for():
            self._ready.set()

    def waiting_for(self) -> list[str]:
        """What the router still waits for before it serves; empty once it has served."""
        if self.ready:
            return []
        return [d for d in self.required if not self._up[d]]

    def dependencies(self) -> dict[str, DependencyState]:
        """Each watched dependency as last heard."""
        return {d: DependencyState(self._up[d], self._detail(d)) for d in self.watched}

    def _detail(self, dependency: str) -> str:
        sources = self._sources[dependency]
        if not sources:
            return NOT_ANSWERED
        if len(sources) == 1:
            return next(iter(sources.values())).detail
        serving = sum(s.serving for s in sources.values())
        each = "; ".join(f"{name}: {s.detail}" for name, s in sorted(sources.items()))
        return f"{serving} of {len(sources)} replicas serving ({each})"

    def describe_waits(self) -> str:
        details = {d: s.detail for d, s in self.dependencies().items()}
        return ", ".join(
            f"{d} ({details[d]})" if d in details else f"{d} (opening)" for d in self.waiting_for()
        )

    async def wait(self, remind_every_s: float = REMIND_EVERY_S) -> None:
        """Until every required dependency is up at once. No timeout: whoever starts the router
        bounds its start; the log says what it waits for at each change and every so often."""
        while True:
            self._changed.clear()  # before looking: no change can slip between the two
            if self.ready:
                break
            log.info("router not serving yet: waiting for %s", self.describe_waits())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remind_every_s)
        log.info("every dependency is serving: %s", ", ".join(self.required))


async def follow(
    readiness: Readiness,
    dependency: str,
    sources: Callable[[], Awaitable[Mapping[str, C]]],
    watch: Watch[C],
    refresh_every_s: float | None = None,
) -> None:
    """Watch each source of `dependency` for as long as it is one, until cancelled. With
    `refresh_every_s`, the sources are looked up again that often (replicas behind a DNS name)."""
    watching: dict[str, asyncio.Task[None]] = {}
    try:
        while True:
            current = await sources()
            for name, channel in current.items():
                if name not in watching:
                    report = functools.partial(readiness.report, dependency, name)
                    watching[name] = asyncio.create_task(watch(channel, report))
            for gone in watching.keys() - current.keys():
                watching.pop(gone).cancel()
                readiness.forget(dependency, gone)
            if refresh_every_s is None:
                await asyncio.gather(*watching.values())
                return
            await asyncio.sleep(refresh_every_s)
    finally:
        for task in watching.values():
            task.cancel()
