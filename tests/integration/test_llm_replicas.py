"""The router over two real LLM service processes (llama.cpp engine: it starts in seconds; the
routing does not depend on the engine): sessions spread over both; when one is killed, every
request that had not started is served by the other."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from forge.v1 import common_pb2, router_pb2, router_pb2_grpc
from grpc import aio

from services.common.config import load_profile
from services.router.app import RouterApp
from services.router.settings import RouterSettings
from tests.helpers import (
    ServiceProcess,
    forge_test_home,
    free_port,
    mesh_dialer,
    metric_value,
    scrape,
    serving,
)

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra: llamacpp)")


@pytest.fixture(scope="module")
async def replicas() -> AsyncIterator[list[tuple[ServiceProcess, str, str]]]:
    env = {
        "FORGE_HOME": str(forge_test_home()),
        "FORGE_LLM_ENGINE": "llama_cpp",
        "FORGE_LLM_MAX_NUM_SEQS": "4",
    }
    procs = [ServiceProcess("llm", env=env) for _ in range(2)]
    started = []
    try:
        for proc in procs:
            event = await proc.start()
            started.append(
                (proc, f"127.0.0.1:{event['port']}", f"http://127.0.0.1:{event['metrics_port']}/metrics")
            )
        for proc in procs:
            await proc.next_event("serving", timeout_s=180)
        yield started
    finally:
        for proc in procs:
            if proc.proc is not None and proc.proc.returncode is None:
                proc.signal(signal.SIGTERM)
                try:
                    await proc.wait(30)
                except TimeoutError:
                    await proc.kill()


def finished(metrics_url: str) -> float:
    return metric_value(scrape(metrics_url), "forge_llm_requests_finished_total")


async def chat(stub: router_pb2_grpc.RouterServiceAsyncStub, n: int) -> router_pb2.ChatSummary:
    request = router_pb2.ChatRequest(
        messages=[common_pb2.ChatMessage(role="user", content=f"Say hello to guest number {n}.")],
        params=common_pb2.SamplingParams(max_tokens=12, temperature=0.0),
        disable_retrieval=True,
    )
    summary = None
    async for reply in stub.Chat(request, timeout=120):
        if reply.HasField("summary"):
            summary = reply.summary
    assert summary is not None and summary.usage.completion_tokens > 0
    return summary


async def test_sessions_spread_and_move_off_a_dead_replica(
    replicas: list[tuple[ServiceProcess, str, str]], tmp_path: Path
) -> None:
    settings = RouterSettings(
        llm_addresses=",".join(address for _, address, _ in replicas),
        embed_address=f"127.0.0.1:{free_port()}",  # not needed: no retrieval, no rails here
        guardrails_enabled=False,
        readiness_dependencies="llm",  # embed is not there
        llm_replica_cooldown_s=60,
    )
    app = RouterApp(load_profile("cpu", environ={}), tmp_path, settings, mesh_dialer("router"))
    async with serving(app) as server, aio.insecure_channel(server.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        before = [finished(url) for _, _, url in replicas]
        await asyncio.gather(*(chat(stub, n) for n in range(4)))
        spread = [finished(url) - b for (_, _, url), b in zip(replicas, before, strict=True)]
        assert sum(spread) == 4 and min(spread) >= 1, f"least-loaded routing should use both: {spread}"

        dead, _, _ = replicas[0]
        await dead.kill()
        survivor_url = replicas[1][2]
        survivor_before = finished(survivor_url)
        # Sequential and concurrent: each must be served, none lost to the dead replica.
        for n in range(3):
            await chat(stub, 10 + n)
        await asyncio.gather(*(chat(stub, 20 + n) for n in range(3)))
        assert finished(survivor_url) - survivor_before == 6
