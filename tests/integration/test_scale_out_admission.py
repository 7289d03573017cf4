"""Router replicas share one admission limit through a real Redis: real router processes, a real
LLM process (llama.cpp, so its own count of running requests can be read), real Redis.

- M + k concurrent chats spread over two routers: exactly k refused (RESOURCE_EXHAUSTED with
  RetryInfo), and the LLM never runs more than M at once.
- A router SIGKILLed while it holds sessions: its slots come free within the lease TTL and the
  other router admits.
- Redis stopped under load: each router admits its share (M // 2) and says so in GetCapacity;
  Redis restarted: global again, with the sessions still running counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from forge.v1 import common_pb2, router_pb2, router_pb2_grpc
from grpc import aio

from services.cli.redis_server import RedisServer, RedisUnavailable, start_redis
from services.common.security.keys import KeyStore
from services.common.status import retry_details
from tests.helpers import ServiceProcess, admin_key, bearer, free_port, metric_value, scrape

pytestmark = pytest.mark.timeout(600)

MAX_SESSIONS = 2  # the global limit (the LLM pool's capacity in a real deployment)
LEASE_TTL_S = 2
TENANT = "scale"
START_S = 180
# Long enough to hold its slot while the others are refused (llama.cpp: ~30 tokens/s here).
LONG = router_pb2.ChatRequest(
    messages=[common_pb2.ChatMessage(role="user", content="Count from 1 to 300, separated by commas.")],
    params=common_pb2.SamplingParams(max_tokens=160, temperature=0.0),
    disable_retrieval=True,
)


@dataclass
class Router:
    process: ServiceProcess
    channel: aio.Channel
    tenant_auth: tuple[tuple[str, str], ...]
    admin_auth: tuple[tuple[str, str], ...]

    @property
    def stub(self) -> router_pb2_grpc.RouterServiceAsyncStub:
        return router_pb2_grpc.RouterServiceStub(self.channel)

    async def capacity(self) -> router_pb2.GetCapacityResponse:
        admin = router_pb2_grpc.AdminServiceStub(self.channel)
        return await admin.GetCapacity(router_pb2.GetCapacityRequest(), metadata=self.admin_auth, timeout=10)

    async def chat(self, request: router_pb2.ChatRequest = LONG) -> str:
        parts = []
        async for reply in self.stub.Chat(request, metadata=self.tenant_auth, timeout=120):
            parts.append(reply.delta)
        return "".join(parts)


@dataclass
class Cluster:
    redis: RedisServer
    llm: ServiceProcess
    llm_metrics: str
    home: Path
    env: dict[str, str]
    key: str
    routers: list[Router]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = start_redis(free_port(), tmp_path_factory.mktemp("redis"))
    except RedisUnavailable as e:
        pytest.skip(f"no Redis server: {e}")
    yield server
    server.stop()


async def start_router(home: Path, env: dict[str, str], key: str, replica: str) -> Router:
    process = ServiceProcess(
        "router",
        env={
            **env,
            "FORGE_ROUTER_REPLICA_ID": replica,
            "FORGE_ROUTER_MILVUS_URI": str(home / f"{replica}.db"),
        },
    )
    try:
        await process.start()
        await process.next_event("serving", timeout_s=START_S)
    except BaseException:
        await process.kill()
        raise
    channel = aio.insecure_channel(f"127.0.0.1:{process.port}")
    return Router(process, channel, bearer(key), bearer(admin_key(home)))


@pytest.fixture(scope="module")
async def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    home = tmp_path_factory.mktemp("scale-admission-home")
    key = KeyStore(home / "keys" / "keys.yaml").create(TENANT)
    # The LLM would run more than M at once: any refusal below is the routers' doing.
    llm = ServiceProcess(
        "llm",
        env={"FORGE_HOME": str(home), "FORGE_LLM_ENGINE": "llama_cpp", "FORGE_LLM_MAX_NUM_SEQS": "8"},
    )
    started: list[ServiceProcess] = [llm]
    routers: list[Router] = []
    cluster: Cluster | None = None
    try:
        listening = await llm.start()
        await llm.next_event("serving", timeout_s=START_S)
        unused = f"127.0.0.1:{free_port()}"
        env = {
            "FORGE_HOME": str(home),
            "FORGE_ROUTER_ADMISSION_MAX_SESSIONS": str(MAX_SESSIONS),
            "FORGE_ROUTER_ADMISSION_URL": redis_server.url,
            "FORGE_ROUTER_ADMISSION_REPLICAS": "2",
            "FORGE_ROUTER_ADMISSION_LEASE_TTL_S": str(LEASE_TTL_S),
            "FORGE_ROUTER_LLM_ADDRESS": f"127.0.0.1:{llm.port}",
            "FORGE_ROUTER_EMBED_ADDRESS": unused,
            "FORGE_ROUTER_GUARDRAILS_ADDRESS": unused,
            "FORGE_ROUTER_GUARDRAILS_ENABLED": "false",
            "FORGE_ROUTER_READINESS_DEPENDENCIES": "llm",  # chats without retrieval need no more
        }
        for replica in ("router-0", "router-1"):
            routers.append(await start_router(home, env, key, replica))
            started.append(routers[-1].process)
        llm_metrics = f"http://127.0.0.1:{listening['metrics_port']}/metrics"
        cluster = Cluster(redis_server, llm, llm_metrics, home, env, key, routers)
        yield cluster
    finally:
        for router in routers:
            await router.channel.close()
        for process in reversed(started):
            await process.kill()
        if cluster is not None:
            cluster.redis.stop()  # the one a test restarted, if it did (the fixture stops the first)


@contextlib.asynccontextmanager
async def llm_peak(cluster: Cluster) -> AsyncIterator[list[float]]:
    """The most requests the LLM service had in progress at once while the block ran (sampled)."""
    peak = [0.0]

    async def sample() -> None:
        while True:
            text = await asyncio.to_thread(scrape, cluster.llm_metrics)
            peak[0] = max(peak[0], metric_value(text, "forge_llm_active_requests"))
            await asyncio.sleep(0.05)  # a sampling period, not a synchronisation

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


def refusal(outcome: object) -> tuple[str, float | None]:
    assert isinstance(outcome, aio.AioRpcError), outcome
    assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
    retry_after, reason = retry_details(outcome)
    return reason or "", retry_after


async def until(predicate: Any, what: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():  # noqa: ASYNC110 - a condition in another process: polled
            await asyncio.sleep(0.1)
    assert await predicate(), what


async def test_m_plus_k_chats_over_two_routers_exactly_k_refused(cluster: Cluster) -> None:
    extra = 3
    a, b = cluster.routers
    async with llm_peak(cluster) as peak:
        outcomes = await asyncio.gather(
            *((a if i % 2 else b).chat() for i in range(MAX_SESSIONS + extra)), return_exceptions=True
        )
    answered = [o for o in outcomes if isinstance(o, str)]
    refused = [refusal(o) for o in outcomes if not isinstance(o, str)]
    assert len(answered) == MAX_SESSIONS and len(refused) == extra, outcomes
    assert all(reason == "SESSION_LIMIT" and (retry or 0) > 0 for reason, retry in refused), refused
    assert 0 < peak[0] <= MAX_SESSIONS, f"the LLM ran {peak[0]} requests at once"
    for router in (a, b):
        capacity = await router.capacity()
        assert capacity.admission_mode == "shared" and capacity.max_sessions == MAX_SESSIONS
        assert capacity.replicas == 2 and capacity.active_sessions == 0
    rejected = sum([(await r.capacity()).rejected_total["SESSION_LIMIT"] for r in (a, b)])
    assert rejected >= extra


async def test_a_killed_routers_slots_free_within_the_lease_ttl(cluster: Cluster) -> None:
    doomed = await start_router(cluster.home, cluster.env, cluster.key, "router-doomed")
    survivor = cluster.routers[0]
    try:
        holding = [asyncio.create_task(doomed.chat()) for _ in range(MAX_SESSIONS)]

        async def doomed_holds_all() -> bool:
            return (await doomed.capacity()).replica_active_sessions == MAX_SESSIONS

        await until(doomed_holds_all, "the doomed router to hold every slot")
        with pytest.raises(aio.AioRpcError) as refused:
            await survivor.chat()
        assert refusal(refused.value)[0] == "SESSION_LIMIT"
        doomed.process.signal(signal.SIGKILL)
        await doomed.process.wait()
        killed_at = asyncio.get_running_loop().time()
        await asyncio.gather(*holding, return_exceptions=True)

        async def survivor_admits() -> bool:
            try:
                await survivor.chat(SHORT)
                return True
            except aio.AioRpcError as e:
                assert refusal(e)[0] == "SESSION_LIMIT"
                return False

        await until(survivor_admits, "the survivor to admit", timeout_s=LEASE_TTL_S + 15)
        # The leases expire after the TTL; the chat itself takes a moment on top.
        assert asyncio.get_running_loop().time() - killed_at < LEASE_TTL_S + 10
    finally:
        await doomed.channel.close()
        await doomed.process.kill()


VERY_LONG = router_pb2.ChatRequest(
    messages=LONG.messages,
    params=common_pb2.SamplingParams(max_tokens=600, temperature=0.0),
    disable_retrieval=True,
)
SHORT = router_pb2.ChatRequest(
    messages=[common_pb2.ChatMessage(role="user", content="Say hello.")],
    params=common_pb2.SamplingParams(max_tokens=4, temperature=0.0),
    disable_retrieval=True,
)


async def test_redis_stopped_under_load_each_router_admits_its_share_then_global_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = cluster.routers
    running = [asyncio.create_task(a.chat(VERY_LONG))]  # a session in flight when Redis goes

    async def runs_one(router: Router) -> bool:
        return (await router.capacity()).replica_active_sessions == 1

    try:
        await until(lambda: runs_one(a), "router-0 to run the long chat")
        cluster.redis.stop()
        try:
            # Each router now admits M // 2 = 1 on its own: router-0 is full with the running chat.
            for router in (a, b):
                capacity = await router.capacity()
                assert capacity.admission_mode == "shared_fallback", capacity
                assert capacity.max_sessions == MAX_SESSIONS // 2
            with pytest.raises(aio.AioRpcError) as refused:
                await a.chat(SHORT)
            assert refusal(refused.value)[0] == "SESSION_LIMIT"
            assert "Redis unavailable" in (refused.value.details() or "")
            running.append(asyncio.create_task(b.chat(VERY_LONG)))  # router-1's share is free
            await until(lambda: runs_one(b), "router-1 to admit its share")
        finally:
            cluster.redis = start_redis(cluster.redis.port, tmp_path / "redis-again")

        # Back to global (GetCapacity renews first): both running sessions are registered again,
        # so the global limit of 2 is full and a third chat is refused on either router.
        async def global_again() -> bool:
            capacity = await a.capacity()
            return capacity.admission_mode == "shared" and capacity.active_sessions == 2

        await until(global_again, "router-0 back on the shared limit with both sessions counted")
        assert (await b.capacity()).admission_mode == "shared"
        for router in (a, b):
            with pytest.raises(aio.AioRpcError) as refused:
                await router.chat(SHORT)
            assert refusal(refused.value)[0] == "SESSION_LIMIT"
            assert "across all router replicas" in (refused.value.details() or "")
        assert not any(task.done() for task in running), "the long chats ended too soon to show it"
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
