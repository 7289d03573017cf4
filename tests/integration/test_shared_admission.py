"""Shared admission on a real Redis: two controllers stand for two router replicas (the real-router
tests are in test_scale_out_admission.py). One global limit, global tenant quotas, leases that
expire when their holder stops renewing, the fallback when Redis is down (stopped for real) and
the way back, and a queued request taking a slot freed on the other replica."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.cli.redis_server import RedisServer, RedisUnavailable, start_redis
from services.common.config import AdmissionConfig, QueueConfig
from services.common.errors import ResourceExhausted
from services.router.admission import SESSION_LIMIT, TENANT_QUOTA, Admission
from services.router.admission_ledger import RedisLedger
from services.router.shared_admission import (
    SHARED,
    SHARED_FALLBACK,
    SharedAdmissionController,
    SharedAdmissionSettings,
)
from tests.helpers import free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = start_redis(free_port(), tmp_path / "redis")
    except RedisUnavailable as e:
        pytest.skip(f"no Redis server: {e}")
    yield server
    server.stop()


def controller(
    server: RedisServer,
    replica: str,
    max_sessions: int = 3,
    per_tenant: int = 0,
    replicas: int = 2,
    ttl_s: float = 10.0,
    queue: bool = False,
) -> SharedAdmissionController:
    config = AdmissionConfig(
        max_sessions=max_sessions,
        max_sessions_per_tenant=per_tenant,
        queue=QueueConfig(enabled=queue, max_depth=8, max_wait_interactive_s=10.0),
    )
    settings = SharedAdmissionSettings(
        url=server.url, replica_id=replica, replicas=replicas, lease_ttl_s=ttl_s, poll_interval_s=0.05
    )
    return SharedAdmissionController(config, settings)


@contextlib.asynccontextmanager
async def started(*controllers: SharedAdmissionController) -> AsyncIterator[None]:
    for c in controllers:
        await c.start()
    try:
        yield
    finally:
        for c in controllers:
            await c.close()


async def hold(c: SharedAdmissionController, tenant: str, stack: contextlib.AsyncExitStack) -> Admission:
    return await stack.enter_async_context(c.session(tenant))


async def test_the_limit_is_global_across_replicas(redis_server: RedisServer) -> None:
    a, b = controller(redis_server, "a"), controller(redis_server, "b")
    async with started(a, b), contextlib.AsyncExitStack() as stack:
        assert a.mode == b.mode == SHARED
        await hold(a, "t1", stack)
        await hold(b, "t2", stack)
        await hold(a, "t3", stack)
        for c in (a, b):
            with pytest.raises(ResourceExhausted) as refused:
                await hold(c, "t4", stack)
            assert refused.value.reason == SESSION_LIMIT
            assert refused.value.retry_after_s > 0
            assert "across all router replicas" in str(refused.value)
        await b.refresh()
        snap = b.snapshot()
        assert (snap.max_sessions, snap.active_sessions, snap.replica_active_sessions) == (3, 3, 1)
        assert (snap.mode, snap.replica_id, snap.replicas) == (SHARED, "b", 2)


async def test_a_slot_freed_on_one_replica_is_taken_on_the_other(redis_server: RedisServer) -> None:
    a, b = controller(redis_server, "a", max_sessions=1), controller(redis_server, "b", max_sessions=1)
    async with started(a, b):
        async with a.session("t"):
            with pytest.raises(ResourceExhausted):
                await b.session("t").__aenter__()
        # a's release runs as its own task: b gets the slot once it has landed, never two at once.
        async with asyncio.timeout(5):
            while True:
                try:
                    async with b.session("t"):
                        break
                except ResourceExhausted:
                    await asyncio.sleep(0.01)  # polling the ledger for the release, not a sync


async def test_tenant_quotas_are_global(redis_server: RedisServer) -> None:
    a = controller(redis_server, "a", max_sessions=10, per_tenant=1)
    b = controller(redis_server, "b", max_sessions=10, per_tenant=1)
    async with started(a, b), contextlib.AsyncExitStack() as stack:
        await hold(a, "acme", stack)
        with pytest.raises(ResourceExhausted) as refused:
            await hold(b, "acme", stack)
        assert refused.value.reason == TENANT_QUOTA
        await hold(b, "globex", stack)  # another tenant is not affected


async def test_leases_of_a_replica_that_stops_renewing_expire(redis_server: RedisServer) -> None:
    ledger = RedisLedger(redis_server.url, "forge:admission", ttl_s=1.0, timeout_s=0.5)
    try:
        # A "dead" replica: it claimed both slots and will never renew them.
        for lease in ("dead:1", "dead:2"):
            assert (await ledger.claim(lease, "t", 2, 0)).granted
        survivor = controller(redis_server, "alive", max_sessions=2)
        async with started(survivor):
            with pytest.raises(ResourceExhausted):
                await survivor.session("t").__aenter__()
            async with asyncio.timeout(5):  # the TTL is 1 s
                while True:
                    try:
                        async with survivor.session("t"):
                            break
                    except ResourceExhausted:
                        await asyncio.sleep(0.05)
    finally:
        await ledger.close()


async def test_redis_down_falls_back_to_a_share_and_comes_back(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    a = controller(redis_server, "a", max_sessions=4, replicas=2)
    async with started(a), contextlib.AsyncExitStack() as stack:
        await hold(a, "t", stack)
        redis_server.stop()  # for real: the process is gone
        # The next claim finds Redis gone: this replica now admits its share, 4 // 2 = 2, in all.
        await hold(a, "t", stack)
        assert a.mode == SHARED_FALLBACK
        with pytest.raises(ResourceExhausted) as refused:
            await hold(a, "t", stack)
        assert "Redis unavailable" in str(refused.value)
        snap = a.snapshot()
        assert (snap.mode, snap.max_sessions, snap.active_sessions) == (SHARED_FALLBACK, 2, 2)
        # Redis comes back (empty): the next renewal registers both sessions held here.
        restarted = start_redis(redis_server.port, tmp_path / "redis-again")
        try:
            await a.refresh()
            assert a.mode == SHARED
            snap = a.snapshot()
            assert (snap.max_sessions, snap.active_sessions, snap.replica_active_sessions) == (4, 2, 2)
            await hold(a, "t", stack)
            await hold(a, "t", stack)
            with pytest.raises(ResourceExhausted):
                await hold(a, "t", stack)
        finally:
            await stack.aclose()
            restarted.stop()


async def test_redis_frozen_counts_as_down(redis_server: RedisServer) -> None:
    """SIGSTOP: connections open but nothing answers; the call's timeout decides."""
    a = controller(redis_server, "a", max_sessions=4, replicas=2)
    async with started(a):
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            async with asyncio.timeout(5):
                async with a.session("t"):
                    assert a.mode == SHARED_FALLBACK
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        await a.refresh()
        assert a.mode == SHARED


async def test_a_queued_request_takes_a_slot_freed_on_another_replica(redis_server: RedisServer) -> None:
    a = controller(redis_server, "a", max_sessions=1)
    b = controller(redis_server, "b", max_sessions=1, queue=True)
    async with started(a, b):
        release = asyncio.Event()
        held = asyncio.Event()

        async def holder() -> None:
            async with a.session("t"):
                held.set()
                await release.wait()

        holding = asyncio.create_task(holder())
        await held.wait()
        waiting = asyncio.create_task(b.session("t").__aenter__())
        async with asyncio.timeout(5):
            while b.snapshot().queued_requests != 1:  # noqa: ASYNC110 - let the loop run the task
                await asyncio.sleep(0)
        assert not waiting.done()
        release.set()
        await holding
        async with asyncio.timeout(5):
            admission = await waiting
        assert admission.queued_s > 0
        b._give_back(admission)


async def test_close_hands_back_held_leases(redis_server: RedisServer) -> None:
    a, b = controller(redis_server, "a", max_sessions=1), controller(redis_server, "b", max_sessions=1)
    await a.start()
    entered = a.session("t")
    await entered.__aenter__()
    await a.close()  # a router stopping with a session still open (its exit runs later)
    async with started(b), b.session("t"):
        pass
