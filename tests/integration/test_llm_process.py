"""`forge serve llm` as a real process: when its vLLM engine core dies, calls fail fast with
UNAVAILABLE (no hung stream) and health turns NOT_SERVING; SIGTERM still exits cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import grpc
import psutil
import pytest
from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import ServiceProcess, forge_test_home

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def llm_process() -> AsyncIterator[ServiceProcess]:
    process = ServiceProcess("llm", env={"FORGE_HOME": str(forge_test_home()), "FORGE_LLM_MAX_NUM_SEQS": "2"})
    yield process
    # Only this service's own engine processes: the session's in-process engine must live on.
    try:
        leftovers = psutil.Process(process.proc.pid).children(recursive=True) if process.proc else []
    except psutil.NoSuchProcess:  # it already exited (the test stops it with SIGTERM)
        leftovers = []
    await process.kill()
    for child in leftovers:
        if child.is_running():
            child.kill()


async def test_engine_death_is_unavailable_and_not_serving(llm_process: ServiceProcess) -> None:
    await llm_process.start()
    await llm_process.next_event("serving", timeout_s=300)
    assert llm_process.proc is not None
    engine_processes = psutil.Process(llm_process.proc.pid).children(recursive=True)
    assert engine_processes, "vLLM runs its engine core in child processes"

    async with llm_process.channel() as channel:
        llm = llm_pb2_grpc.LlmServiceStub(channel)
        request = llm_pb2.GenerateRequest(
            prompt="1, 2, 3,", params=common_pb2.SamplingParams(max_tokens=1000, temperature=0)
        )
        call = llm.Generate(request)
        await call.read()  # the stream is running
        for child in engine_processes:
            child.kill()
        with pytest.raises(aio.AioRpcError) as broken:
            while await asyncio.wait_for(call.read(), 30) != aio.EOF:
                pass
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "llm engine" in (broken.value.details() or "")

        with pytest.raises(aio.AioRpcError) as refused:
            await asyncio.wait_for(llm.Generate(request).read(), 30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == NOT_SERVING

    llm_process.signal(signal.SIGTERM)
    assert await llm_process.wait(timeout_s=60) == 0
