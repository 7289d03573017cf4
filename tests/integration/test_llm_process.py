"""`forge serve llm` as a real process: when its vLLM engine core dies, the call in flight fails fast
with UNAVAILABLE and RetryInfo (no hung stream), saying the process is exiting; the process turns
NOT_SERVING, announces why, drains and exits with code 3 (EXIT_FATAL) on its own, so whatever
supervises it starts a fresh one (tests/integration/test_supervisor_services.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import psutil
import pytest
from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc
from grpc import aio

from services.common.server import EXIT_FATAL
from services.common.status import retry_details
from tests.helpers import ServiceProcess, forge_test_home


@pytest.fixture
async def llm_process() -> AsyncIterator[ServiceProcess]:
    process = ServiceProcess("llm", env={"FORGE_HOME": str(forge_test_home()), "FORGE_LLM_MAX_NUM_SEQS": "2"})
    yield process
    # Only this service's own engine processes: the session's in-process engine must live on.
    try:
        leftovers = psutil.Process(process.proc.pid).children(recursive=True) if process.proc else []
    except psutil.NoSuchProcess:  # it already exited (with code 3, on its own)
        leftovers = []
    await process.kill()
    for child in leftovers:
        if child.is_running():
            child.kill()


async def test_engine_death_is_unavailable_then_the_process_exits_3(llm_process: ServiceProcess) -> None:
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
        killed = time.monotonic()
        for child in engine_processes:
            child.kill()
        with pytest.raises(aio.AioRpcError) as broken:
            while await asyncio.wait_for(call.read(), 30) != aio.EOF:
                pass
        assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
        details = broken.value.details() or ""
        assert "llm engine" in details and "exiting" in details and "supervisor" in details, details
        delay, _ = retry_details(broken.value)
        assert delay is not None and delay >= 1

        failed = await llm_process.next_event("failed", timeout_s=30)
        assert "engine died" in str(failed["reason"])
        stopped = await llm_process.next_event("stopped", timeout_s=60)
        assert stopped["exit_code"] == EXIT_FATAL
        assert await llm_process.wait(timeout_s=30) == EXIT_FATAL
        print(f"engine SIGKILL -> llm process exited {EXIT_FATAL} after {time.monotonic() - killed:.1f} s")
        with pytest.raises(aio.AioRpcError) as refused:  # gone: nothing hangs on it
            await asyncio.wait_for(llm.Generate(request).read(), 30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not [p.pid for p in engine_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
