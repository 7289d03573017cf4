"""No hangs, on real processes and real gRPC: a call made WITHOUT a client deadline still ends
within a bound when the other side goes quiet, and frees what it held.

- An LLM frozen (SIGSTOP) mid-answer: the chat ends within the generation idle bound with
  UNAVAILABLE, its session slot is free, and the LLM aborts the generation once thawed.
- A client that stops reading: with a receive window smaller than the answer, the router's write
  waits, the stream-write bound ends the chat and the LLM aborts the generation; with gRPC's
  default window (megabytes) a chat answer never fills it, so the chat runs to its end and frees
  the slot even while the client process is frozen (SIGSTOP).
- An Ingest stream whose client sends nothing is ended after the idle bound and its stream slot
  is free for the next one.

The LLM runs on llama.cpp (it starts in seconds; the bounds do not depend on the engine); the
router runs in this process over mutual TLS to it, without retrieval or rails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc, router_pb2, router_pb2_grpc
from grpc import aio

from services.common.config import AdmissionConfig, load_profile
from services.router import metrics as router_metrics
from services.router.app import RouterApp
from services.router.settings import RouterSettings
from tests.helpers import (
    REPO_ROOT,
    ServiceProcess,
    forge_test_home,
    free_port,
    mesh_dialer,
    metric_value,
    scrape,
    serving,
)

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra: llamacpp)")

# Greedy SmolLM2 continues this to max_tokens (~40 tokens/s on a busy CPU): a long answer.
COUNTING = "Continue this sequence without stopping: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
# Short bounds, so the tests take seconds; the defaults are 30 s (generation, writes), 60 s (ingest).
IDLE_S = 2.0
# Long enough that a busy 2-core machine never leaves such a gap between two tokens of a live LLM.
GENERATION_IDLE_S = 12.0
# Room for a busy 2-core machine between the bound firing and the client hearing of it.
SLACK_S = 10.0


@pytest.fixture(scope="module")
async def llm() -> AsyncIterator[ServiceProcess]:
    env = {
        "FORGE_HOME": str(forge_test_home()),
        "FORGE_LLM_ENGINE": "llama_cpp",
        "FORGE_LLM_MAX_NUM_SEQS": "4",
    }
    process = ServiceProcess("llm", env=env)
    try:
        await process.start()
        await process.next_event("serving", timeout_s=180)
        yield process
    finally:
        if process.proc is not None and process.proc.returncode is None:
            os.kill(process.proc.pid, signal.SIGCONT)  # a failed test may leave it frozen
            process.signal(signal.SIGTERM)
            try:
                await process.wait(30)
            except TimeoutError:
                await process.kill()


def llm_metric(llm: ServiceProcess, name: str, labels: dict[str, str] | None = None) -> float:
    port = next(e["metrics_port"] for e in llm.events if e.get("event") == "listening")
    return metric_value(scrape(f"http://127.0.0.1:{port}/metrics"), name, labels)


def aborted(llm: ServiceProcess) -> float:
    return llm_metric(llm, "forge_llm_aborted_total", {"reason": "cancelled"})


def write_stalls() -> float:
    return float(router_metrics.STREAMS_ENDED.labels("write_stall")._value.get())


def router_app(llm: ServiceProcess, home: Path, max_sessions: int = 4, **settings: Any) -> RouterApp:
    profile = load_profile("cpu", environ={})
    profile = profile.model_copy(update={"admission": AdmissionConfig(max_sessions=max_sessions)})
    router_settings = RouterSettings(
        llm_address=f"127.0.0.1:{llm.port}",
        embed_address=f"127.0.0.1:{free_port()}",  # not needed: no retrieval here
        guardrails_enabled=False,
        readiness_dependencies="llm",
        milvus_uri=str(home / "milvus.db"),
        # Text leaves in small pieces: the first comes at once, and many follow.
        output_segment_chars=16,
        **settings,
    )
    return RouterApp(profile, home, router_settings, mesh_dialer("router"))


@contextlib.asynccontextmanager
async def router(app: RouterApp) -> AsyncIterator[tuple[Any, Any, str]]:
    async with serving(app) as server, aio.insecure_channel(server.address) as channel:
        yield (
            router_pb2_grpc.RouterServiceStub(channel),
            router_pb2_grpc.AdminServiceStub(channel),
            server.address,
        )


def counting(max_tokens: int) -> router_pb2.ChatRequest:
    return router_pb2.ChatRequest(
        messages=[common_pb2.ChatMessage(role="user", content=COUNTING)],
        params=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        disable_retrieval=True,
    )


async def active(admin: Any) -> int:
    capacity = await admin.GetCapacity(router_pb2.GetCapacityRequest(), timeout=10)
    return int(capacity.active_sessions)


async def poll(predicate: Any, what: str, timeout_s: float) -> float:
    """Poll an observable state until it holds; returns how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await predicate():
        if loop.time() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)
    return loop.time() - started


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_frozen_llm_ends_a_chat_without_deadline_within_the_idle_bound(
    llm: ServiceProcess, tmp_path: Path
) -> None:
    assert llm.proc is not None
    async with router(router_app(llm, tmp_path, generation_idle_timeout_s=GENERATION_IDLE_S)) as (
        stub,
        admin,
        _,
    ):
        # A first answer, straight from the LLM, warms the fresh process (in CI its first token
        # took longer than the router's bound); the bound under test is the gap while it is frozen.
        channel = llm.channel()
        try:
            warm = llm_pb2.GenerateRequest(
                prompt=COUNTING, params=common_pb2.SamplingParams(max_tokens=2, temperature=0)
            )
            async for _ in llm_pb2_grpc.LlmServiceStub(channel).Generate(warm, timeout=120):
                pass
        finally:
            await channel.close()
        before = aborted(llm)
        call = stub.Chat(counting(1500), metadata=(("x-forge-tenant", "frozen"),))  # no deadline
        async for reply in call:
            if reply.delta:
                break  # the LLM is generating
        with frozen(llm.proc.pid):
            started = time.monotonic()
            with pytest.raises(aio.AioRpcError) as ended:
                async for _ in call:
                    pass
            took = time.monotonic() - started
            # Ended by the router while the LLM is still frozen: its slot is free already.
            assert await active(admin) == 0
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value.details()
        assert (
            ended.value.details()
            == f"llm unavailable: no token for {GENERATION_IDLE_S:g}s; the generation was aborted"
        )
        assert GENERATION_IDLE_S <= took < GENERATION_IDLE_S + SLACK_S, took

        # Thawed, the LLM finds the call cancelled and aborts the generation in its engine.
        async def llm_aborted() -> bool:
            return aborted(llm) > before

        await poll(llm_aborted, "the LLM to abort the generation", 30)


CLIENT = """
import json, sys, grpc
from forge.v1 import common_pb2, router_pb2, router_pb2_grpc

address, options, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
channel = grpc.insecure_channel(address, options=[tuple(o) for o in options])
stub = router_pb2_grpc.RouterServiceStub(channel)
request = router_pb2.ChatRequest(
    messages=[common_pb2.ChatMessage(role="user", content=sys.argv[4])],
    params=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    disable_retrieval=True,
)
call = stub.Chat(request, metadata=(("x-forge-tenant", "reader"),))
for reply in call:
    if reply.delta:
        print("streaming", flush=True)
        break
sys.stdin.read()  # reads nothing more; `call` stays referenced, so the call stays open
"""


@contextlib.asynccontextmanager
async def stalled_client(address: str, options: list[tuple[str, int]], max_tokens: int) -> AsyncIterator[int]:
    """A client process that starts a chat, reads its first text, then reads nothing more."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        address,
        json.dumps(options),
        str(max_tokens),
        COUNTING,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 120)
        assert line.strip() == b"streaming", line
        yield process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        await process.wait()


async def test_a_client_that_stops_reading_is_ended_by_the_write_bound(
    llm: ServiceProcess, tmp_path: Path
) -> None:
    # A receive window of 64 bytes (no BDP growth): two pieces fill it; the router's writes wait.
    small_window = [("grpc.http2.lookahead_bytes", 64), ("grpc.http2.bdp_probe", 0)]
    app = router_app(llm, tmp_path, stream_write_timeout_s=IDLE_S)
    async with router(app) as (_, admin, address):
        before, stalls = aborted(llm), write_stalls()
        async with stalled_client(address, small_window, 1500):

            async def freed() -> bool:
                return await active(admin) == 0

            await poll(freed, "the stalled chat's slot to be freed", 120)
            # Freed by the write bound, not by the answer ending: the generation was cut short.
            assert write_stalls() == stalls + 1

            async def llm_aborted() -> bool:
                return aborted(llm) > before

            await poll(llm_aborted, "the LLM to abort the generation", 30)


async def test_a_frozen_client_with_a_default_window_holds_its_slot_no_longer_than_the_answer(
    llm: ServiceProcess, tmp_path: Path
) -> None:
    """gRPC's default receive window grows to megabytes, far above a chat answer: the router's
    writes never wait, so the chat runs to its end and frees the slot though the client process
    is frozen. (Were it not, the write bound above would end it.)"""
    app = router_app(llm, tmp_path, stream_write_timeout_s=600)  # the write bound plays no part
    async with router(app) as (_, admin, address):
        finished, cut = llm_metric(llm, "forge_llm_requests_finished_total"), aborted(llm)
        async with stalled_client(address, [], 200) as pid:
            os.kill(pid, signal.SIGSTOP)

            async def freed() -> bool:
                return await active(admin) == 0

            await poll(freed, "the frozen client's slot to be freed", 120)

            async def answered() -> bool:
                return llm_metric(llm, "forge_llm_requests_finished_total") > finished

            await poll(answered, "the LLM to finish the answer", 30)
            assert aborted(llm) == cut, "the answer ran to its end"


async def test_an_idle_ingest_stream_is_ended_and_its_slot_freed(llm: ServiceProcess, tmp_path: Path) -> None:
    app = router_app(llm, tmp_path, ingest_idle_timeout_s=IDLE_S, max_ingest_streams_per_tenant=1)
    async with router(app) as (stub, _, _):
        never = asyncio.Event()

        async def nothing() -> AsyncIterator[router_pb2.IngestRequest]:
            await never.wait()  # the client sends nothing and never closes its side
            yield router_pb2.IngestRequest()

        for attempt in range(2):  # the second takes the tenant's only slot: the first freed it
            started = time.monotonic()
            with pytest.raises(aio.AioRpcError) as ended:
                _ = [r async for r in stub.Ingest(nothing(), metadata=(("x-forge-tenant", "idle"),))]
            took = time.monotonic() - started
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (attempt, ended.value.details())
            assert f"the client sent nothing for {IDLE_S:g}s" in (ended.value.details() or "")
            assert IDLE_S <= took < IDLE_S + SLACK_S, took
