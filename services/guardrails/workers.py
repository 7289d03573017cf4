"""Each rail's own bounded executor: a few threads and a bounded queue in front of them.

A shared pool let one slow rail (spaCy on a long text) starve the others and charged its queue
to their timeouts, so load turned fail-open rails off without a word. Here every rail has its
threads, a check reserves a place in the queue of every rail it needs before any runs (all or
none), and a full queue refuses the check with a retry delay sized from the rail's recent run
times. A place is held until the rail's thread is done, including a thread that outlived its
timeout: the bound counts the work really running."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.errors import ResourceExhausted
from services.guardrails import metrics

T = TypeVar("T")

_MIN_RETRY_S = 0.05
_MAX_RETRY_S = 10.0


@dataclass(frozen=True)
class Ran(Generic[T]):
    value: T
    run_s: float  # ran in one of the rail's threads


class RailWorkers:
    """Runs one rail's scans. `in_flight` (queued + running) is only touched on the event loop."""

    def __init__(self, name: str, workers: int, max_queue: int) -> None:
        self.name = name
        self.workers = workers
        self.capacity = workers + max_queue
        self.in_flight = 0
        self._run_s = 0.01  # moving average of one run, for the retry delay
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"rail-{name}")

    def has_room(self) -> bool:
        return self.in_flight < self.capacity

    def retry_after_s(self) -> float:
        """About when the texts in progress now are done: the backlog, worked off by the rail's
        threads at its recent pace (a retry then finds room)."""
        backlog_s = self.in_flight / self.workers * self._run_s
        return min(_MAX_RETRY_S, max(_MIN_RETRY_S, backlog_s))

    def reserve(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    async def run(self, work: Callable[[], T], started: asyncio.Event | None = None) -> Ran[T]:
        """`work` in one of the rail's threads (in the caller's context, so traces continue), on a
        place the caller reserved; `started` is set when it leaves the queue. Cancelling the
        await cancels work that has not started; work that has keeps its place until it ends."""
        loop = asyncio.get_running_loop()
        began: list[float] = []

        def call() -> T:
            began.append(time.perf_counter())
            if started is not None:
                loop.call_soon_threadsafe(started.set)
            return work()

        context = contextvars.copy_context()
        future: Future[T] = self._executor.submit(context.run, call)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._done, began))
        value = await asyncio.wrap_future(future)
        ended = time.perf_counter()
        return Ran(value, ended - began[0])

    def _done(self, began: list[float]) -> None:
        self.release()
        if began:
            self._run_s = 0.8 * self._run_s + 0.2 * (time.perf_counter() - began[0])

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Reservation:
    """A place in the queue of every rail one check needs, taken all at once or not at all
    (RESOURCE_EXHAUSTED naming the full rail). Taken on the event loop without awaiting, so no
    other check interleaves. A place is handed to the rail's run, or given back by `close`."""

    def __init__(self, workers: Iterable[RailWorkers]) -> None:
        chosen = list(workers)
        full = [w for w in chosen if not w.has_room()]
        if full:
            busiest = max(full, key=lambda w: w.retry_after_s())
            metrics.REFUSED.labels(busiest.name).inc()
            raise ResourceExhausted(
                "GUARDRAILS_BUSY",
                f"guardrails: rail {busiest.name!r} has {busiest.in_flight} texts in progress "
                f"(limit {busiest.capacity}: workers + max_queue); retry later",
                busiest.retry_after_s(),
            )
        for w in chosen:
            w.reserve()
        self._unused = set(chosen)

    async def run(
        self, workers: RailWorkers, work: Callable[[], T], started: asyncio.Event | None = None
    ) -> Ran[T]:
        self._unused.remove(workers)  # from here the run's end gives the place back
        return await workers.run(work, started)

    def close(self) -> None:
        for w in self._unused:
            w.release()
        self._unused.clear()
