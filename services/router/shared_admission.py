"""Admission shared by router replicas: one global session limit and global tenant quotas, counted
as leases in Redis (`admission_ledger`), with this replica's own priority queue in front.

What holds (issue 14):
- The limit is global: a session starts only when the ledger's claim script found room, so N
  replicas together never run more than `max_sessions` (the LLM pool's capacity) while Redis
  answers. Tenant quotas are global the same way.
- The optional priority queue stays per replica and takes global slots: its head claims whenever a
  session of this replica ends, and otherwise polls the ledger every `poll_interval_s` (a slot
  freed on another replica is seen within that). Interactive before batch, FIFO within a
  priority, across this replica's waiters only.
- A replica that dies loses its leases within the lease TTL (it stops renewing them).
- Redis unreachable (down, partitioned, stopped): the replica falls back to admitting at most its
  share of the limit, `max_sessions // replicas` (and the same share of a tenant quota), counted
  in process: never unlimited, and N replicas together stay within the limit. `replicas` is the
  larger of the configured count and the replicas last seen renewing. The mode shows in
  GetCapacity and the `forge_router_admission_mode` metric. The renewal loop keeps probing; when
  Redis answers, every session this replica holds (those admitted in fallback too) is registered
  as a lease and admission is global again. Redis restarted empty: the sessions are re-registered
  at each replica's next renewal (within ttl/3), and until then the global count misses them.
- A claim whose caller went away mid-call may leave a lease nobody holds: it is released at once
  when possible, and expires within the TTL otherwise. Never a leak beyond the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from services.common.config import AdmissionConfig
from services.common.errors import ResourceExhausted
from services.router.admission import (
    ADMISSION_MODES,
    QUEUE_FULL,
    SESSION_LIMIT,
    TENANT_QUOTA,
    Admission,
    AdmissionController,
    CapacitySnapshot,
    _dec,
    _inc,
)
from services.router.admission_ledger import NO_TENANT_SLOT, LedgerUnavailable, RedisLedger
from services.router.ports import Priority

log = logging.getLogger(__name__)

IN_PROCESS, SHARED, SHARED_FALLBACK = ADMISSION_MODES


def default_replica_id() -> str:
    """The host name (the pod's name on Kubernetes) and the process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class SharedAdmissionSettings:
    url: str
    replica_id: str
    replicas: int = 1  # routers expected to share the limit (the fallback share divides by it)
    lease_ttl_s: float = 10.0
    key_prefix: str = "forge:admission"
    call_timeout_s: float = 0.5  # a Redis call slower than this counts as Redis unavailable
    poll_interval_s: float = 0.1  # how often a queued head asks for a slot freed elsewhere


@dataclass(frozen=True)
class _Outcome:
    granted: bool
    reason: str = ""  # SESSION_LIMIT or TENANT_QUOTA when not granted


class _SharedWaiter:
    __slots__ = ("enqueued_at", "future", "lease", "priority", "queued", "tenant")

    def __init__(
        self, tenant: str, priority: Priority, lease: str, enqueued_at: float, future: asyncio.Future[str]
    ) -> None:
        self.tenant = tenant
        self.priority = priority
        self.lease = lease
        self.enqueued_at = enqueued_at
        # Resolves "" when a slot was claimed under `lease`, else the refusal's reason.
        self.future = future
        self.queued = True


class SharedAdmissionController(AdmissionController):
    """Drop-in for `AdmissionController` (same sessions, listeners, snapshot) over a shared ledger."""

    def __init__(
        self,
        config: AdmissionConfig,
        settings: SharedAdmissionSettings,
        ledger: RedisLedger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, clock)
        self._settings = settings
        self._ledger = ledger or RedisLedger(
            settings.url, settings.key_prefix, settings.lease_ttl_s, settings.call_timeout_s
        )
        # Until Redis has answered once, this replica admits only its share.
        self._mode = SHARED_FALLBACK
        self._held: dict[str, str] = {}  # lease -> tenant, every session this replica runs
        self._global_active = 0
        self._answered_once = False
        self._replicas_seen = 0
        self._lease_ids = itertools.count()
        self._lease_prefix = f"{settings.replica_id}:{secrets.token_hex(4)}"
        self._shared_queue: list[tuple[int, int, _SharedWaiter]] = []
        self._slot_freed = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def mode(self) -> str:
        return self._mode

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._renew_task = asyncio.create_task(self._renew_forever(), name="admission-renew")

    async def close(self) -> None:
        tasks = [t for t in (self._renew_task, self._pump_task) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Hand back what is still held, so other replicas need not wait for the TTL.
        for lease, tenant in list(self._held.items()):
            with contextlib.suppress(LedgerUnavailable):
                await self._ledger.release(lease, tenant)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._ledger.close()

    async def refresh(self) -> None:
        """Renew this replica's leases now; updates the global figures, or falls back."""
        try:
            renewal = await self._ledger.renew(self._settings.replica_id, list(self._held.items()))
        except LedgerUnavailable as e:
            self._fall_back(e)
            return
        self._global_active = renewal.active
        self._replicas_seen = renewal.replicas
        if self._mode != SHARED:
            again = "answers again" if self._answered_once else "answers"
            log.warning("admission: Redis %s; the session limit of %d is global (%d replicas seen)",
                        again, self._config.max_sessions, renewal.replicas)  # fmt: skip
            self._answered_once = True
            self._mode = SHARED
            self._slot_freed.set()

    async def _renew_forever(self) -> None:
        interval = self._settings.lease_ttl_s / 3
        while True:
            # Faster while falling back: going back to global sooner is the point.
            await asyncio.sleep(interval if self._mode == SHARED else min(interval, 1.0))
            await self.refresh()

    def _fall_back(self, error: Exception) -> None:
        if self._mode != SHARED_FALLBACK:
            share, _ = self._fallback_limits()
            log.warning("admission: Redis unavailable (%s); admitting at most %d sessions here "
                        "until it answers", error, share)  # fmt: skip
        self._mode = SHARED_FALLBACK

    def _replicas(self) -> int:
        return max(1, self._settings.replicas, self._replicas_seen)

    def _fallback_limits(self) -> tuple[int, int]:
        replicas = self._replicas()
        share = max(1, self._config.max_sessions // replicas)
        quota = self._config.max_sessions_per_tenant
        return share, (max(1, quota // replicas) if quota else 0)

    # --- claiming a slot -----------------------------------------------------------------------

    def _new_lease(self) -> str:
        return f"{self._lease_prefix}:{next(self._lease_ids)}"

    async def _claim(self, lease: str, tenant: str) -> _Outcome:
        """Take a slot under `lease` (recorded in `_held` when granted), globally or in fallback."""
        if self._mode == SHARED:
            cfg = self._config
            try:
                claim = await self._ledger.claim(lease, tenant, cfg.max_sessions, cfg.max_sessions_per_tenant)
            except asyncio.CancelledError:
                self._release_in_background(lease, tenant)  # the script may have run
                raise
            except LedgerUnavailable as e:
                self._fall_back(e)
            else:
                self._global_active = claim.active
                if not claim.granted:
                    return _Outcome(False, TENANT_QUOTA if claim.outcome == NO_TENANT_SLOT else SESSION_LIMIT)
                self._hold(lease, tenant)
                return _Outcome(True)
        share, tenant_share = self._fallback_limits()
        if tenant_share and self._tenant_active.get(tenant, 0) >= tenant_share:
            return _Outcome(False, TENANT_QUOTA)
        if len(self._held) >= share:
            return _Outcome(False, SESSION_LIMIT)
        self._hold(lease, tenant)
        return _Outcome(True)

    def _hold(self, lease: str, tenant: str) -> None:
        self._held[lease] = tenant
        self._active = len(self._held)
        _inc(self._tenant_active, tenant)

    async def _acquire(self, tenant: str, priority: Priority, timeout_s: float | None) -> Admission:
        cfg = self._config
        lease = self._new_lease()
        if not self._shared_queue:  # waiters here go first: a newcomer does not overtake them
            outcome = await self._claim(lease, tenant)
            if outcome.granted:
                return self._admitted(tenant, priority, 0.0, lease)
            if outcome.reason == TENANT_QUOTA or not cfg.queue.enabled:
                raise self._refusal(outcome.reason, tenant, priority)
        if len(self._shared_queue) >= cfg.queue.max_depth:
            raise self._reject(
                QUEUE_FULL,
                priority,
                f"all {self._limit()} sessions are busy and the queue is full ({cfg.queue.max_depth})",
                self.retry_after_s(len(self._shared_queue), self._limit()),
            )
        max_wait_s = (
            cfg.queue.max_wait_interactive_s
            if priority == Priority.INTERACTIVE
            else cfg.queue.max_wait_batch_s
        )
        wait_s = max_wait_s if timeout_s is None else min(max_wait_s, timeout_s)
        if wait_s <= 0:
            raise self._timed_out(priority, 0.0)
        return await self._wait_shared(tenant, priority, lease, wait_s)

    def _limit(self) -> int:
        return self._config.max_sessions if self._mode == SHARED else self._fallback_limits()[0]

    def _refusal(self, reason: str, tenant: str, priority: Priority) -> ResourceExhausted:
        where = (
            "across all router replicas" if self._mode == SHARED else "on this replica (Redis unavailable)"
        )
        if reason == TENANT_QUOTA:
            quota = (
                self._config.max_sessions_per_tenant if self._mode == SHARED else self._fallback_limits()[1]
            )
            return self._reject(
                TENANT_QUOTA,
                priority,
                f"tenant {tenant!r} is at its quota of {quota} concurrent sessions {where}",
                self.retry_after_s(0, quota),
            )
        return self._reject(
            SESSION_LIMIT,
            priority,
            f"router is at its limit of {self._limit()} concurrent sessions {where}",
            self.retry_after_s(0, self._limit()),
        )

    async def _wait_shared(self, tenant: str, priority: Priority, lease: str, wait_s: float) -> Admission:
        loop = asyncio.get_running_loop()
        waiter = _SharedWaiter(tenant, priority, lease, self._clock(), loop.create_future())
        heapq.heappush(self._shared_queue, (priority, next(self._sequence), waiter))
        _inc(self._tenant_queued, tenant)
        timer = loop.call_later(wait_s, self._expire_shared, waiter)
        self._ensure_pump()
        try:
            reason = await waiter.future
        except BaseException:
            future = waiter.future
            if future.done() and not future.cancelled() and future.result() == "":
                self._release_lease(lease)  # claimed just before the cancellation landed
            else:
                self._dequeue_shared(waiter)
            raise
        finally:
            timer.cancel()
        queued_s = self._clock() - waiter.enqueued_at
        if reason == QUEUE_TIMEOUT_MARK:
            raise self._timed_out(priority, queued_s)
        if reason:
            raise self._refusal(reason, tenant, priority)
        return self._admitted(tenant, priority, queued_s, lease)

    def _expire_shared(self, waiter: _SharedWaiter) -> None:
        if waiter.future.done():
            return
        self._dequeue_shared(waiter)
        waiter.future.set_result(QUEUE_TIMEOUT_MARK)

    def _dequeue_shared(self, waiter: _SharedWaiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        self._shared_queue = [entry for entry in self._shared_queue if entry[2] is not waiter]
        heapq.heapify(self._shared_queue)
        _dec(self._tenant_queued, waiter.tenant)

    def _ensure_pump(self) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = asyncio.create_task(self._pump(), name="admission-queue")

    async def _pump(self) -> None:
        """Claim slots for the head of the queue, one at a time, until the queue is empty."""
        while self._shared_queue:
            _, _, waiter = self._shared_queue[0]
            if waiter.future.done():  # cancelled; its clean-up has not run yet
                self._dequeue_shared(waiter)
                continue
            self._slot_freed.clear()
            outcome = await self._claim(waiter.lease, waiter.tenant)
            if waiter.future.done():  # it timed out or went away during the claim
                if outcome.granted:
                    self._release_lease(waiter.lease)
                continue
            if outcome.granted or outcome.reason == TENANT_QUOTA:
                self._dequeue_shared(waiter)
                waiter.future.set_result("" if outcome.granted else TENANT_QUOTA)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), self._settings.poll_interval_s)

    # --- outcomes and release ------------------------------------------------------------------

    def _give_back(self, admission: Admission) -> None:
        self._release_lease(admission.lease)

    def _release_lease(self, lease: str) -> None:
        tenant = self._held.pop(lease, None)
        if tenant is None:
            return
        self._active = len(self._held)
        _dec(self._tenant_active, tenant)
        self._release_in_background(lease, tenant)
        self._slot_freed.set()

    def _release_in_background(self, lease: str, tenant: str) -> None:
        # `_Session.__aexit__` is synchronous (nothing may interrupt a release), so the ledger's
        # release runs as its own task; if Redis is down the lease expires within the TTL instead.
        if self._mode != SHARED:
            return
        task = asyncio.get_running_loop().create_task(self._release_quietly(lease, tenant))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _release_quietly(self, lease: str, tenant: str) -> None:
        try:
            await self._ledger.release(lease, tenant)
        except LedgerUnavailable as e:
            self._fall_back(e)

    def snapshot(self) -> CapacitySnapshot:
        local = super().snapshot()
        shared = self._mode == SHARED
        held = len(self._held)
        return replace(
            local,
            max_sessions=self._limit(),
            active_sessions=self._global_active if shared else held,
            queued_requests=len(self._shared_queue),
            mode=self._mode,
            replica_id=self._settings.replica_id,
            replica_active_sessions=held,
            replicas=self._replicas(),
        )


# A waiter's future result for "no slot within its wait" (never a reason name).
QUEUE_TIMEOUT_MARK = "timeout"
