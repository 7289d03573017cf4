"""Admission control for the router: how many Chat sessions run at once, and who waits for a slot.

A session is one in-flight Chat stream. At most `max_sessions` run at once across all tenants, and
at most `max_sessions_per_tenant` for one tenant (0 = no per-tenant cap). A request that cannot
start is refused with `ResourceExhausted` carrying a stable reason (see `REASONS`) and a
`retry_after_s` hint. With the opt-in queue (`queue.enabled`), a request that finds no free slot
waits instead in a bounded priority queue (interactive before batch, FIFO within a priority) for
at most its priority's max wait and the caller's remaining deadline.

Design notes:
- A freed slot is handed straight to the head of the queue (the slot never becomes "free" while
  someone waits), so a newcomer can never jump the queue between a release and the waiter's wake-up.
- `session()` is an async context manager that releases its slot whatever ends it: normal exit, an
  exception, cancellation, or `GeneratorExit` when the Chat async generator holding it is closed.
- Pure asyncio, one event loop, no threads. Queue timeouts use the event loop's timers; the
  injected `clock` only measures durations (queue wait, session length, the retry-after estimate).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from services.common.config import AdmissionConfig
from services.common.errors import ResourceExhausted
from services.router.ports import Priority

log = logging.getLogger(__name__)

SESSION_LIMIT = "SESSION_LIMIT"
TENANT_QUOTA = "TENANT_QUOTA"
QUEUE_FULL = "QUEUE_FULL"
QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
REASONS = (SESSION_LIMIT, TENANT_QUOTA, QUEUE_FULL, QUEUE_TIMEOUT)
# Where the limit is counted (CapacitySnapshot.mode; shared_admission.py for the shared ones).
ADMISSION_MODES = ("in_process", "shared", "shared_fallback")

# Retry-after hint: before any session has finished there is nothing to estimate from.
RETRY_AFTER_DEFAULT_S = 1.0
RETRY_AFTER_MIN_S = 0.1
RETRY_AFTER_MAX_S = 30.0
# Weight of the newest session duration in the moving average (about the last 5-10 sessions count).
DURATION_EWMA_ALPHA = 0.2


@dataclass(frozen=True)
class TenantSnapshot:
    tenant: str
    active_sessions: int
    max_sessions: int  # 0 = no per-tenant cap


@dataclass(frozen=True)
class CapacitySnapshot:
    max_sessions: int
    active_sessions: int
    queue_enabled: bool
    queue_capacity: int  # queue.max_depth, or 0 when the queue is disabled
    queued_requests: int
    admitted_total: int
    rejected_total: dict[str, int]  # every reason in REASONS, zero included
    tenants: list[TenantSnapshot]  # tenants with active sessions, sorted by name
    # IN_PROCESS: the figures above are this router's. SHARED: max/active are global (every
    # replica's, from Redis) and `replica_active_sessions` this one's. SHARED_FALLBACK: Redis does
    # not answer; max is this replica's share of the limit, active its own sessions.
    mode: str = "in_process"
    replica_id: str = ""
    replica_active_sessions: int = 0
    replicas: int = 1  # replicas sharing the limit (seen renewing in Redis, or configured)


@dataclass(frozen=True)
class Admission:
    """What the holder of a slot learns."""

    tenant: str
    priority: Priority
    queued_s: float  # time spent waiting in the queue (0 when admitted at once)
    lease: str = ""  # the slot's id in a shared ledger ("" in process)


class AdmissionListener(Protocol):
    """Hooks called synchronously on the event loop after the controller's bookkeeping; a listener
    that raises is logged and ignored, it can never leak or double-count a slot."""

    def on_admitted(self, admission: Admission) -> None: ...

    def on_rejected(self, reason: str, priority: Priority) -> None: ...

    def on_released(self, admission: Admission, held_s: float) -> None: ...


class _Waiter:
    """One queued request. `future` resolves True when a slot was handed over, False on timeout."""

    __slots__ = ("enqueued_at", "future", "priority", "queued", "tenant")

    def __init__(self, tenant: str, priority: Priority, enqueued_at: float, future: asyncio.Future[bool]):
        self.tenant = tenant
        self.priority = priority
        self.enqueued_at = enqueued_at
        self.future = future
        self.queued = True  # still in the heap and counted in the tenant's queued requests


def _inc(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _dec(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]  # keep the maps small when many tenants come and go


class AdmissionController:
    """Session slots, per-tenant quotas and the optional priority queue of one router process."""

    def __init__(self, config: AdmissionConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        # Slots taken, including one just handed to a waiter that has not woken up yet.
        self._active = 0
        self._tenant_active: dict[str, int] = {}
        self._tenant_queued: dict[str, int] = {}
        # (priority, arrival sequence, waiter): heap order = priority, then FIFO.
        self._queue: list[tuple[int, int, _Waiter]] = []
        self._sequence = itertools.count()
        self._admitted_total = 0
        self._rejected_total = dict.fromkeys(REASONS, 0)
        self._ewma_duration_s: float | None = None
        self._listeners: list[AdmissionListener] = []

    @property
    def config(self) -> AdmissionConfig:
        return self._config

    def session(
        self, tenant: str, priority: Priority = Priority.INTERACTIVE, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[Admission]:
        """A slot for one session. Entering raises `ResourceExhausted` when the request is refused
        (or times out in the queue); leaving releases the slot, whatever the way out.

        `timeout_s` is the time the caller has left (its deadline); it caps the queue wait."""
        return _Session(self, tenant, Priority(priority), timeout_s)

    def add_listener(self, listener: AdmissionListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: AdmissionListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def snapshot(self) -> CapacitySnapshot:
        # The Prometheus exporter calls this from its own thread: each dict is copied in one C-level
        # call (atomic under the GIL) so a concurrent change on the loop cannot break the iteration.
        # The fields may be a moment apart from one another, which is fine for monitoring.
        tenant_items = list(self._tenant_active.items())
        rejected = dict(self._rejected_total)
        cfg = self._config
        per_tenant = cfg.max_sessions_per_tenant
        return CapacitySnapshot(
            max_sessions=cfg.max_sessions,
            active_sessions=self._active,
            queue_enabled=cfg.queue.enabled,
            queue_capacity=cfg.queue.max_depth if cfg.queue.enabled else 0,
            queued_requests=len(self._queue),
            admitted_total=self._admitted_total,
            rejected_total=rejected,
            tenants=[TenantSnapshot(t, n, per_tenant) for t, n in sorted(tenant_items) if n > 0],
            replica_active_sessions=self._active,
        )

    async def start(self) -> None:
        """Begin background work (a shared controller's lease renewal); nothing in process."""

    async def close(self) -> None:
        """End background work; sessions still held are released by their own exits."""

    async def refresh(self) -> None:
        """Bring `snapshot()`'s figures up to date (a shared controller asks its ledger)."""

    def retry_after_s(self, ahead: int = 0, servers: int | None = None) -> float:
        """Estimate of when a slot frees: with `servers` slots busy, one ends on average every
        ewma_duration / servers seconds, and the caller needs `ahead` + 1 of them to end."""
        if self._ewma_duration_s is None:
            return RETRY_AFTER_DEFAULT_S
        estimate = self._ewma_duration_s * (ahead + 1) / (servers or self._config.max_sessions)
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, estimate))

    # --- acquire -------------------------------------------------------------------------------

    async def _acquire(self, tenant: str, priority: Priority, timeout_s: float | None) -> Admission:
        cfg = self._config
        per_tenant = cfg.max_sessions_per_tenant
        # A tenant quota is never queued: the tenant itself is the bottleneck, and a queued request
        # of a tenant at its cap would have to be skipped at hand-off, breaking the queue order.
        # Queued requests count towards the quota, so handing one a slot can never exceed the cap.
        if per_tenant:
            held = self._tenant_active.get(tenant, 0) + self._tenant_queued.get(tenant, 0)
            if held >= per_tenant:
                raise self._reject(
                    TENANT_QUOTA,
                    priority,
                    f"tenant {tenant!r} is at its quota of {per_tenant} concurrent sessions",
                    self.retry_after_s(self._tenant_queued.get(tenant, 0), per_tenant),
                )
        # `not self._queue` is a safeguard: a slot is never free while someone waits (hand-off).
        if self._active < cfg.max_sessions and not self._queue:
            self._active += 1
            _inc(self._tenant_active, tenant)
            return self._admitted(tenant, priority, 0.0)
        if not cfg.queue.enabled:
            raise self._reject(
                SESSION_LIMIT,
                priority,
                f"router is at its limit of {cfg.max_sessions} concurrent sessions",
                self.retry_after_s(),
            )
        if len(self._queue) >= cfg.queue.max_depth:
            raise self._reject(
                QUEUE_FULL,
                priority,
                f"all {cfg.max_sessions} sessions are busy and the queue is full ({cfg.queue.max_depth})",
                self.retry_after_s(len(self._queue)),
            )
        max_wait_s = (
            cfg.queue.max_wait_interactive_s
            if priority == Priority.INTERACTIVE
            else cfg.queue.max_wait_batch_s
        )
        wait_s = max_wait_s if timeout_s is None else min(max_wait_s, timeout_s)
        if wait_s <= 0:  # the caller's deadline has already passed: queueing cannot help
            raise self._timed_out(priority, 0.0)
        return await self._wait(tenant, priority, wait_s)

    async def _wait(self, tenant: str, priority: Priority, wait_s: float) -> Admission:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(tenant, priority, self._clock(), loop.create_future())
        heapq.heappush(self._queue, (priority, next(self._sequence), waiter))
        _inc(self._tenant_queued, tenant)
        # The timer resolves the future (instead of cancelling this task), so a timeout and a
        # hand-off are decided in one place and can never both happen.
        timer = loop.call_later(wait_s, self._expire, waiter)
        try:
            granted = await waiter.future
        except BaseException:
            # CancelledError: the client went away while queued. Task cancellation cancels the
            # future too, unless a slot was handed over just before the cancellation landed: then
            # this request owns a slot it will never use, so pass it on instead of leaking it.
            future = waiter.future
            if future.done() and not future.cancelled() and future.result():
                self._release_slot(tenant)
            else:
                self._dequeue(waiter)
            raise
        finally:
            timer.cancel()
        queued_s = self._clock() - waiter.enqueued_at
        if not granted:
            raise self._timed_out(priority, queued_s)
        return self._admitted(tenant, priority, queued_s)

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.future.done():  # handed a slot or cancelled in the same loop iteration
            return
        self._dequeue(waiter)
        waiter.future.set_result(False)

    def _dequeue(self, waiter: _Waiter) -> None:
        if not waiter.queued:  # already taken off by a hand-off that skipped it
            return
        waiter.queued = False
        # O(depth) removal keeps the queue length exact; the queue is small (max_depth).
        self._queue = [entry for entry in self._queue if entry[2] is not waiter]
        heapq.heapify(self._queue)
        _dec(self._tenant_queued, waiter.tenant)

    # --- release -------------------------------------------------------------------------------

    def _release(self, admission: Admission, started_at: float) -> None:
        held_s = max(0.0, self._clock() - started_at)
        ewma = self._ewma_duration_s
        self._ewma_duration_s = held_s if ewma is None else ewma + DURATION_EWMA_ALPHA * (held_s - ewma)
        self._give_back(admission)
        self._notify(lambda listener: listener.on_released(admission, held_s))

    def _give_back(self, admission: Admission) -> None:
        """Return a finished session's slot (synchronous: called from `_Session.__aexit__`)."""
        self._release_slot(admission.tenant)

    def _release_slot(self, tenant: str) -> None:
        """Give up one of `tenant`'s slots: hand it to the head of the queue, or free it."""
        _dec(self._tenant_active, tenant)
        while self._queue:
            _, _, waiter = heapq.heappop(self._queue)
            waiter.queued = False
            _dec(self._tenant_queued, waiter.tenant)
            if waiter.future.done():  # cancelled; its task has not run its clean-up yet
                continue
            _inc(self._tenant_active, waiter.tenant)
            waiter.future.set_result(True)
            return
        self._active -= 1

    # --- outcomes ------------------------------------------------------------------------------

    def _admitted(self, tenant: str, priority: Priority, queued_s: float, lease: str = "") -> Admission:
        self._admitted_total += 1
        admission = Admission(tenant=tenant, priority=priority, queued_s=queued_s, lease=lease)
        self._notify(lambda listener: listener.on_admitted(admission))
        return admission

    def _timed_out(self, priority: Priority, queued_s: float) -> ResourceExhausted:
        return self._reject(
            QUEUE_TIMEOUT,
            priority,
            f"no session slot freed within {queued_s:.2f} s in the queue",
            self.retry_after_s(len(self._queue)),
        )

    def _reject(
        self, reason: str, priority: Priority, message: str, retry_after_s: float
    ) -> ResourceExhausted:
        self._rejected_total[reason] += 1
        self._notify(lambda listener: listener.on_rejected(reason, priority))
        return ResourceExhausted(reason, f"{message}; retry in {retry_after_s:.1f} s", retry_after_s)

    def _notify(self, call: Callable[[AdmissionListener], None]) -> None:
        for listener in list(self._listeners):
            try:
                call(listener)
            except Exception:
                log.exception("admission listener %r failed", listener)


class _Session(AbstractAsyncContextManager[Admission]):
    """One use of a slot: acquired on enter, released on exit, whatever the way out."""

    def __init__(
        self, controller: AdmissionController, tenant: str, priority: Priority, timeout_s: float | None
    ) -> None:
        self._controller = controller
        self._tenant = tenant
        self._priority = priority
        self._timeout_s = timeout_s
        self._admission: Admission | None = None
        self._started_at = 0.0

    async def __aenter__(self) -> Admission:
        if self._admission is not None:
            raise RuntimeError("an admission session cannot be entered twice")
        admission = await self._controller._acquire(self._tenant, self._priority, self._timeout_s)
        self._admission = admission
        self._started_at = self._controller._clock()
        return admission

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: no await here, so a cancellation or GeneratorExit cannot
        # interrupt the release half-way.
        admission, self._admission = self._admission, None
        if admission is not None:
            self._controller._release(admission, self._started_at)
