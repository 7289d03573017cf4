"""The router's readiness on real processes, as `forge serve` runs them (mutual TLS inside, API
keys on the router): started before its embed service, the router is NOT_SERVING, answers
UNAVAILABLE naming what it waits for and lists it in GetInfo; once embed serves, so does the
router, and its first Ingest works (issue 13). Afterwards a dependency SIGKILLed flips its own
health entry and gauge while the router stays SERVING and serves what it can; an LLM with two
replicas is up while one is; a dependency restarted shows SERVING again.

The LLM runs on llama.cpp (it starts in seconds; readiness does not depend on the engine);
guardrails is off to keep the mesh small (its watch is the same code as embed's)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from forge.v1 import common_pb2, ops_pb2, ops_pb2_grpc, router_pb2, router_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.security.keys import KeyStore
from tests.helpers import ServiceProcess, admin_key, bearer, free_port, metric_value, scrape

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra: llamacpp)")

SERVING = int(health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING = int(health_pb2.HealthCheckResponse.NOT_SERVING)
START_S = 240


@dataclass
class Router:
    process: ServiceProcess
    channel: aio.Channel
    admin: tuple[tuple[str, str], ...]
    tenant: tuple[tuple[str, str], ...]
    metrics_url: str

    async def health(self, service: str = "") -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)

    async def info(self) -> ops_pb2.GetInfoResponse:
        stub = ops_pb2_grpc.OpsServiceStub(self.channel)
        reply: ops_pb2.GetInfoResponse = await stub.GetInfo(
            ops_pb2.GetInfoRequest(), metadata=self.admin, timeout=5
        )
        return reply

    def up(self, dependency: str) -> float:
        return metric_value(
            scrape(self.metrics_url), "forge_router_dependency_up", {"dependency": dependency}
        )

    @property
    def stub(self) -> router_pb2_grpc.RouterServiceAsyncStub:
        return router_pb2_grpc.RouterServiceStub(self.channel)


async def until(holds: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60) -> None:
    """Poll an observable state over gRPC or /metrics until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await holds():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.1)


async def stop(process: ServiceProcess) -> None:
    """Children first (the router's Milvus Lite): they hold its stdout."""
    if process.proc is None or process.proc.returncode is not None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(process.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    await process.kill()


@contextlib.asynccontextmanager
async def processes(*started: ServiceProcess) -> AsyncIterator[list[ServiceProcess]]:
    """Every process the test starts, stopped at the end whatever happened."""
    mine = list(started)
    try:
        yield mine
    finally:
        for process in mine:
            await stop(process)


async def ingest(router: Router, doc: str, text: str) -> router_pb2.IngestResponse:
    request = router_pb2.IngestRequest(document=router_pb2.Document(id=doc, text=text))
    replies = [r async for r in router.stub.Ingest(iter([request]), metadata=router.tenant, timeout=120)]
    return replies[-1]


async def test_router_serves_once_its_dependencies_do_and_shows_each_one_after(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"FORGE_HOME": str(home)}
    llm_env = {**env, "FORGE_LLM_ENGINE": "llama_cpp", "FORGE_LLM_MAX_NUM_SEQS": "2"}
    llms = [ServiceProcess("llm", env=llm_env) for _ in range(2)]
    embed_port = free_port()
    key = KeyStore(home / "keys" / "keys.yaml").create("ready")

    async with processes(*llms) as running:
        for llm in llms:
            await llm.start()
        for llm in llms:
            await llm.next_event("serving", timeout_s=START_S)
        router_process = ServiceProcess(
            "router",
            env={
                **env,
                "FORGE_ROUTER_LLM_ADDRESSES": ",".join(f"127.0.0.1:{llm.port}" for llm in llms),
                "FORGE_ROUTER_EMBED_ADDRESS": f"127.0.0.1:{embed_port}",
                "FORGE_ROUTER_GUARDRAILS_ENABLED": "false",
                "FORGE_ROUTER_MILVUS_URI": str(tmp_path / "milvus.db"),
            },
        )
        running.append(router_process)
        listening = await router_process.start()  # embed is not even started
        async with aio.insecure_channel(f"127.0.0.1:{router_process.port}") as channel:
            router = Router(
                router_process,
                channel,
                bearer(admin_key(home)),
                bearer(key),
                f"http://127.0.0.1:{listening['metrics_port']}/metrics",
            )

            # Waiting: for embed only, once the LLM's watch has heard SERVING and Milvus is open.
            async def waits_for_embed_only() -> bool:
                return list((await router.info()).waiting_for) == ["embed"]

            await until(waits_for_embed_only, "GetInfo to list embed alone as awaited")
            info = await router.info()
            assert info.dependencies["llm"].serving and info.dependencies["llm"].detail.startswith(
                "2 of 2 replicas serving"
            ), info.dependencies["llm"]
            assert not info.dependencies["embed"].serving
            assert set(info.dependencies) == {"llm", "embed"}  # guardrails is off: not watched
            assert await router.health() == NOT_SERVING
            assert await router.health("forge.v1.RouterService") == NOT_SERVING
            assert await router.health("dependency/llm") == SERVING
            assert await router.health("dependency/embed") == NOT_SERVING
            assert router.up("llm") == 1 and router.up("embed") == 0
            with pytest.raises(aio.AioRpcError) as refused:
                await ingest(router, "early.txt", "Sent before the router serves.")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "waiting for embed" in (refused.value.details() or ""), refused.value.details()

            # embed starts (listening, then loading: NOT_SERVING, then SERVING): so does the router,
            # and its first Ingest is stored (the client got "still loading" here).
            embed = ServiceProcess("embed", "--port", str(embed_port), env=env)
            running.append(embed)
            await embed.start()
            await router_process.next_event("serving", timeout_s=START_S)
            assert await router.health() == SERVING
            assert (await router.info()).waiting_for == []
            stored = await ingest(router, "zephyr.md", "The access code for the Zephyr vault is 4417.")
            assert stored.documents_ingested == 1 and stored.chunk_count == 1

            # embed SIGKILLed: its entry and gauge flip; the router stays SERVING and answers a
            # chat without retrieval (degraded, as the policy says).
            await embed.kill()

            async def embed_down() -> bool:
                return await router.health("dependency/embed") == NOT_SERVING

            await until(embed_down, "dependency/embed to be NOT_SERVING")
            assert router.up("embed") == 0
            assert await router.health() == SERVING
            info = await router.info()
            assert not info.dependencies["embed"].serving and info.waiting_for == []
            summary = None
            request = router_pb2.ChatRequest(
                messages=[common_pb2.ChatMessage(role="user", content="What is the Zephyr vault code?")],
                params=common_pb2.SamplingParams(max_tokens=8, temperature=0.0),
            )
            async for reply in router.stub.Chat(request, metadata=router.tenant, timeout=120):
                if reply.HasField("summary"):
                    summary = reply.summary
            assert summary is not None and summary.degraded and "embed" in summary.degraded_reasons

            # embed back (a supervisor's restart): SERVING again.
            embed = ServiceProcess("embed", "--port", str(embed_port), env=env)
            running.append(embed)
            await embed.start()

            async def embed_up() -> bool:
                return await router.health("dependency/embed") == SERVING

            await until(embed_up, "dependency/embed to be SERVING again", START_S)
            assert router.up("embed") == 1

            # LLM: up while one of its two replicas is; down when both are gone.
            await llms[0].kill()

            async def one_replica_down() -> bool:
                return (await router.info()).dependencies["llm"].detail.startswith("1 of 2")

            await until(one_replica_down, "GetInfo to show one LLM replica down")
            assert await router.health("dependency/llm") == SERVING and router.up("llm") == 1
            await llms[1].kill()

            async def llm_down() -> bool:
                return await router.health("dependency/llm") == NOT_SERVING

            await until(llm_down, "dependency/llm to be NOT_SERVING")
            assert router.up("llm") == 0
            assert await router.health() == SERVING
