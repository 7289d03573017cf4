"""Admission controller: session limit, tenant quota, priority queue, release on every way out,
and its Prometheus collector. Tasks are synchronised with events and by letting the loop run
(`asyncio.sleep(0)`), never by sleeping; only queue timeouts use (short) real waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from services.common.config import AdmissionConfig, QueueConfig
from services.common.errors import ResourceExhausted
from services.router.admission import (
    REASONS,
    Admission,
    AdmissionController,
    CapacitySnapshot,
    TenantSnapshot,
)
from services.router.admission_metrics import AdmissionCollector, register_admission_metrics
from services.router.ports import Priority

INTERACTIVE = Priority.INTERACTIVE
BATCH = Priority.BATCH


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    max_sessions: int = 2,
    *,
    per_tenant: int = 0,
    queue: bool = False,
    depth: int = 32,
    wait_interactive_s: float = 5.0,
    wait_batch_s: float = 30.0,
    clock: Callable[[], float] | None = None,
) -> AdmissionController:
    config = AdmissionConfig(
        max_sessions=max_sessions,
        max_sessions_per_tenant=per_tenant,
        queue=QueueConfig(
            enabled=queue,
            max_depth=depth,
            max_wait_interactive_s=wait_interactive_s,
            max_wait_batch_s=wait_batch_s,
        ),
    )
    return AdmissionController(config) if clock is None else AdmissionController(config, clock=clock)


async def until(condition: Callable[[], bool], rounds: int = 200) -> None:
    """Let other tasks run until `condition` holds."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


def queued(ctrl: AdmissionController) -> int:
    return ctrl.snapshot().queued_requests


def active(ctrl: AdmissionController) -> int:
    return ctrl.snapshot().active_sessions


async def refused(
    ctrl: AdmissionController,
    tenant: str = "t",
    priority: Priority = INTERACTIVE,
    timeout_s: float | None = None,
) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        async with ctrl.session(tenant, priority, timeout_s):
            pytest.fail("should not have been admitted")
    return caught.value


class Held:
    """A session held by a background task until `release()`; records its admission."""

    def __init__(self, ctrl: AdmissionController, tenant: str, priority: Priority = INTERACTIVE) -> None:
        self.admission: Admission | None = None
        self.entered = asyncio.Event()
        self._release = asyncio.Event()
        self.task = asyncio.create_task(self._run(ctrl, tenant, priority))

    async def _run(self, ctrl: AdmissionController, tenant: str, priority: Priority) -> None:
        async with ctrl.session(tenant, priority) as admission:
            self.admission = admission
            self.entered.set()
            await self._release.wait()

    async def wait_entered(self) -> Admission:
        """The admission, once the session is entered; fails (rather than hangs) if it never is."""
        entered = asyncio.ensure_future(self.entered.wait())
        await asyncio.wait({entered, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.entered.is_set():
            entered.cancel()
            await self.task  # raises whatever ended it
            raise AssertionError("the session ended without being entered")
        assert self.admission is not None
        return self.admission

    def let_go(self) -> None:
        self._release.set()

    async def release(self) -> None:
        self.let_go()
        await self.task


# --- session limit ---------------------------------------------------------------------------------


async def test_limit_reached_rejects_at_once_with_session_limit() -> None:
    ctrl = make(2)
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(ctrl.session("a"))
        await stack.enter_async_context(ctrl.session("b", BATCH))
        assert first == Admission(tenant="a", priority=INTERACTIVE, queued_s=0.0)
        error = await refused(ctrl, "c")
        assert error.reason == "SESSION_LIMIT"
        assert error.retry_after_s == 1.0  # no session finished yet: the default
        snap = ctrl.snapshot()
        assert snap.active_sessions == 2
        assert snap.admitted_total == 2
        assert snap.rejected_total == {
            "SESSION_LIMIT": 1,
            "TENANT_QUOTA": 0,
            "QUEUE_FULL": 0,
            "QUEUE_TIMEOUT": 0,
        }
    assert active(ctrl) == 0
    async with ctrl.session("c"):  # usable again
        assert active(ctrl) == 1


async def test_retry_after_follows_recent_session_durations_and_is_clamped() -> None:
    clock = FakeClock()
    ctrl = make(2, clock=clock)
    async with ctrl.session("a"):
        clock.now += 4.0
    async with ctrl.session("a"), ctrl.session("b"):
        # ewma 4 s, 2 slots, nobody queued: one slot frees every 2 s on average.
        assert (await refused(ctrl)).retry_after_s == pytest.approx(2.0)

    async with ctrl.session("a"):
        clock.now += 10_000.0
    async with ctrl.session("a"), ctrl.session("b"):
        assert (await refused(ctrl)).retry_after_s == 30.0

    fast = make(1, clock=clock)
    async with fast.session("a"):
        pass  # 0 s
    async with fast.session("a"):
        assert (await refused(fast)).retry_after_s == 0.1


# --- tenant quota ----------------------------------------------------------------------------------


async def test_tenant_at_its_quota_is_rejected_other_tenants_are_not() -> None:
    clock = FakeClock()
    ctrl = make(4, per_tenant=2, clock=clock)
    async with ctrl.session("a"):
        clock.now += 4.0
    async with ctrl.session("a"), ctrl.session("a"):
        error = await refused(ctrl, "a")
        assert error.reason == "TENANT_QUOTA"
        assert error.retry_after_s == pytest.approx(2.0)  # ewma 4 s over the tenant's 2 slots
        async with ctrl.session("b"):
            assert active(ctrl) == 3
    assert ctrl.snapshot().rejected_total["TENANT_QUOTA"] == 1


async def test_tenant_quota_is_never_queued_and_queued_requests_count_towards_it() -> None:
    ctrl = make(1, per_tenant=2, queue=True)
    async with ctrl.session("a"):
        waiting = asyncio.create_task(refused(ctrl, "a", timeout_s=0.05))  # queued: a holds 1 of 2
        await until(lambda: queued(ctrl) == 1)
        # a: 1 active + 1 queued = its quota, so the next one is refused at once, not queued.
        assert (await refused(ctrl, "a")).reason == "TENANT_QUOTA"
        assert queued(ctrl) == 1
        assert (await waiting).reason == "QUEUE_TIMEOUT"


# --- queue ---------------------------------------------------------------------------------------


async def test_queue_serves_interactive_before_batch_and_fifo_within_priority() -> None:
    ctrl = make(1, queue=True)
    order: list[str] = []

    async def run(name: str, priority: Priority) -> None:
        async with ctrl.session(name, priority):
            order.append(name)

    tasks: list[asyncio.Task[None]] = []
    async with ctrl.session("holder"):
        for name, priority in [("b1", BATCH), ("i1", INTERACTIVE), ("b2", BATCH), ("i2", INTERACTIVE)]:
            tasks.append(asyncio.create_task(run(name, priority)))
            await until(lambda: queued(ctrl) == len(tasks))
    await asyncio.gather(*tasks)
    assert order == ["i1", "i2", "b1", "b2"]
    snap = ctrl.snapshot()
    assert (snap.active_sessions, snap.queued_requests, snap.admitted_total) == (0, 0, 5)


async def test_freed_slot_goes_to_the_queue_head_not_to_a_newcomer() -> None:
    ctrl = make(1, queue=True)
    order: list[str] = []

    async def run(name: str) -> None:
        async with ctrl.session(name):
            order.append(name)

    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(ctrl.session("holder"))
    waiter = asyncio.create_task(run("waiter"))
    await until(lambda: queued(ctrl) == 1)
    await stack.aclose()  # releases without yielding: the waiter has not woken yet
    assert [t.tenant for t in ctrl.snapshot().tenants] == ["waiter"]
    await run("newcomer")  # must queue behind the waiter, not take the slot
    await waiter
    assert order == ["waiter", "newcomer"]


async def test_queued_request_reports_its_wait() -> None:
    clock = FakeClock()
    ctrl = make(1, queue=True, clock=clock)
    holder = Held(ctrl, "a")
    await holder.wait_entered()
    waiter = Held(ctrl, "b", BATCH)
    await until(lambda: queued(ctrl) == 1)
    clock.now += 1.5
    await holder.release()
    await waiter.wait_entered()
    assert waiter.admission == Admission(tenant="b", priority=BATCH, queued_s=1.5)
    await waiter.release()


async def test_queue_full_rejects_at_once() -> None:
    ctrl = make(1, queue=True, depth=2)
    async with ctrl.session("a"):
        waiters = [Held(ctrl, "b"), Held(ctrl, "c", BATCH)]
        await until(lambda: queued(ctrl) == 2)
        error = await refused(ctrl, "d")
        assert error.reason == "QUEUE_FULL"
        assert error.retry_after_s > 0
        assert queued(ctrl) == 2
    for waiter in waiters:
        await waiter.wait_entered()
        await waiter.release()
    snap = ctrl.snapshot()
    assert (snap.rejected_total["QUEUE_FULL"], snap.admitted_total, snap.active_sessions) == (1, 3, 0)


@pytest.mark.parametrize("priority", [INTERACTIVE, BATCH])
async def test_queue_timeout_after_the_priority_max_wait(priority: Priority) -> None:
    short, long = 0.05, 60.0
    ctrl = make(
        1,
        queue=True,
        wait_interactive_s=short if priority == INTERACTIVE else long,
        wait_batch_s=short if priority == BATCH else long,
    )
    async with ctrl.session("a"):
        error = await refused(ctrl, "b", priority)
        assert error.reason == "QUEUE_TIMEOUT"
        assert error.retry_after_s > 0
        snap = ctrl.snapshot()
        assert (snap.queued_requests, snap.active_sessions, snap.rejected_total["QUEUE_TIMEOUT"]) == (0, 1, 1)
    assert active(ctrl) == 0


async def test_queue_timeout_capped_by_the_callers_remaining_time() -> None:
    ctrl = make(1, queue=True, wait_interactive_s=60.0)
    async with ctrl.session("a"):
        assert (await refused(ctrl, "b", timeout_s=0.05)).reason == "QUEUE_TIMEOUT"
        # No time left at all: refused without queueing.
        assert (await refused(ctrl, "b", timeout_s=0.0)).reason == "QUEUE_TIMEOUT"
        assert queued(ctrl) == 0
    assert ctrl.snapshot().rejected_total["QUEUE_TIMEOUT"] == 2


async def test_caller_timeout_does_not_matter_when_a_slot_is_free() -> None:
    ctrl = make(1, queue=True)
    async with ctrl.session("a", timeout_s=0.0) as admission:
        assert admission.queued_s == 0.0


# --- release on every way out ------------------------------------------------------------------------


async def test_released_after_an_exception_inside_the_session() -> None:
    ctrl = make(1, per_tenant=1)
    with pytest.raises(RuntimeError, match="boom"):
        async with ctrl.session("a"):
            raise RuntimeError("boom")
    assert ctrl.snapshot().tenants == []
    async with ctrl.session("a"):
        assert active(ctrl) == 1


async def test_released_when_the_holding_task_is_cancelled() -> None:
    ctrl = make(1)
    holder = Held(ctrl, "a")
    await holder.wait_entered()
    holder.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder.task
    snap = ctrl.snapshot()
    assert (snap.active_sessions, snap.tenants) == (0, [])


async def test_cancelled_while_queued_leaves_the_queue_without_leaking() -> None:
    ctrl = make(1, per_tenant=1, queue=True)
    async with ctrl.session("a"):
        waiter = Held(ctrl, "b")
        await until(lambda: queued(ctrl) == 1)
        waiter.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter.task
        assert queued(ctrl) == 0
    snap = ctrl.snapshot()
    assert (snap.active_sessions, snap.queued_requests, snap.tenants, snap.admitted_total) == (0, 0, [], 1)
    async with ctrl.session("b"):  # b's quota was not consumed by the cancelled request
        pass


async def test_released_when_the_async_generator_holding_it_is_closed() -> None:
    ctrl = make(1)

    async def chat() -> AsyncGenerator[int, None]:
        async with ctrl.session("a"):
            for i in range(10):
                yield i

    stream = chat()
    assert await anext(stream) == 0
    assert active(ctrl) == 1
    await stream.aclose()  # GeneratorExit at the yield
    assert active(ctrl) == 0


async def test_slot_handed_to_a_waiter_as_it_is_cancelled_is_passed_on() -> None:
    ctrl = make(1, queue=True)
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(ctrl.session("a"))
    doomed, next_in_line = Held(ctrl, "b"), Held(ctrl, "c")
    await until(lambda: queued(ctrl) == 2)
    await stack.aclose()  # releases without yielding: the slot now belongs to "b", not yet awake
    assert [t.tenant for t in ctrl.snapshot().tenants] == ["b"]
    doomed.task.cancel()  # ... and its client goes away right now
    with pytest.raises(asyncio.CancelledError):
        await doomed.task
    assert doomed.admission is None
    await next_in_line.wait_entered()
    assert [t.tenant for t in ctrl.snapshot().tenants] == ["c"]
    await next_in_line.release()
    assert (active(ctrl), queued(ctrl)) == (0, 0)


async def test_slot_handed_to_the_last_waiter_as_it_is_cancelled_is_freed() -> None:
    ctrl = make(1, queue=True)
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(ctrl.session("a"))
    doomed = Held(ctrl, "b")
    await until(lambda: queued(ctrl) == 1)
    await stack.aclose()
    doomed.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed.task
    snap = ctrl.snapshot()
    assert (snap.active_sessions, snap.queued_requests, snap.tenants, snap.admitted_total) == (0, 0, [], 1)
    async with ctrl.session("d"):
        assert active(ctrl) == 1


async def test_waiter_cancelled_just_before_a_release_is_skipped() -> None:
    ctrl = make(1, queue=True)
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(ctrl.session("a"))
    first, second = Held(ctrl, "b"), Held(ctrl, "c")
    await until(lambda: queued(ctrl) == 2)
    first.task.cancel()  # its clean-up has not run yet when the slot frees
    await stack.aclose()
    with pytest.raises(asyncio.CancelledError):
        await first.task
    await second.wait_entered()
    assert [t.tenant for t in ctrl.snapshot().tenants] == ["c"]
    await second.release()
    assert (active(ctrl), queued(ctrl)) == (0, 0)


async def test_a_failing_listener_never_breaks_admission() -> None:
    class Broken:
        def on_admitted(self, admission: Admission) -> None:
            raise RuntimeError("listener bug")

        def on_rejected(self, reason: str, priority: Priority) -> None:
            raise RuntimeError("listener bug")

        def on_released(self, admission: Admission, held_s: float) -> None:
            raise RuntimeError("listener bug")

    ctrl = make(1)
    ctrl.add_listener(Broken())
    async with ctrl.session("a"):
        assert (await refused(ctrl)).reason == "SESSION_LIMIT"
    assert active(ctrl) == 0


# --- snapshot ------------------------------------------------------------------------------------


async def test_snapshot_fields() -> None:
    ctrl = make(4, per_tenant=2, queue=True, depth=8)
    empty = ctrl.snapshot()
    assert empty == CapacitySnapshot(
        max_sessions=4,
        active_sessions=0,
        queue_enabled=True,
        queue_capacity=8,
        queued_requests=0,
        admitted_total=0,
        rejected_total=dict.fromkeys(REASONS, 0),
        tenants=[],
    )
    async with ctrl.session("zeta"), ctrl.session("alpha"), ctrl.session("zeta", BATCH):
        snap = ctrl.snapshot()
        assert snap.active_sessions == 3
        assert snap.admitted_total == 3
        assert snap.tenants == [TenantSnapshot("alpha", 1, 2), TenantSnapshot("zeta", 2, 2)]
    assert make(1).snapshot().queue_capacity == 0
    assert not make(1).snapshot().queue_enabled


# --- metrics -------------------------------------------------------------------------------------


async def test_collector_exposes_capacity_counters_and_histograms() -> None:
    ctrl = make(2, per_tenant=1, queue=True, depth=3)
    registry = CollectorRegistry()
    registry.register(AdmissionCollector(ctrl))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    for reason in REASONS:  # present before anything happened
        assert value("forge_router_rejected_total", reason=reason) == 0
    assert value("forge_router_admission_wait_seconds_count", priority="batch") == 0

    async with ctrl.session("a"):
        async with ctrl.session("b", BATCH):
            assert (await refused(ctrl, "a")).reason == "TENANT_QUOTA"
            assert value("forge_router_sessions_active") == 2
            assert value("forge_router_sessions_max") == 2
            assert value("forge_router_queue_capacity") == 3
            assert value("forge_router_queue_depth") == 0
            assert value("forge_router_tenant_sessions_active", tenant="a") == 1
            assert value("forge_router_tenant_sessions_active", tenant="b") == 1
        assert value("forge_router_tenant_sessions_active", tenant="b") is None

    assert value("forge_router_admitted_total") == 2
    assert value("forge_router_rejected_total", reason="TENANT_QUOTA") == 1
    assert value("forge_router_rejected_total", reason="SESSION_LIMIT") == 0
    assert value("forge_router_admission_wait_seconds_count", priority="interactive") == 1
    assert value("forge_router_admission_wait_seconds_count", priority="batch") == 1
    assert value("forge_router_session_duration_seconds_count") == 2
    text = generate_latest(registry).decode()
    assert "# TYPE forge_router_admitted_total counter" in text
    assert "# TYPE forge_router_sessions_active gauge" in text
    assert "# TYPE forge_router_admission_wait_seconds histogram" in text
    assert 'forge_router_admission_wait_seconds_bucket{le="30.0",priority="interactive"} 1.0' in text


async def test_register_admission_metrics_is_idempotent_and_follows_the_latest_controller() -> None:
    first = make(3)
    register_admission_metrics(first)
    register_admission_metrics(first)  # no duplicate-series error
    assert REGISTRY.get_sample_value("forge_router_sessions_max") == 3
    second = make(7)
    register_admission_metrics(second)
    assert REGISTRY.get_sample_value("forge_router_sessions_max") == 7
