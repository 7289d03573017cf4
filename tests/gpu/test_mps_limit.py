"""MPS mode on a real GPU: the pinned limit `forge up` gives a service (CUDA_MPS_PINNED_DEVICE_MEM_LIMIT
from services.common.isolation) is enforced by the MPS server. Skipped unless an MPS control
daemon runs (`nvidia-cuda-mps-control -d`; tests/gpu/run_on_device.sh starts one where it may)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from forge.v1 import embed_pb2, embed_pb2_grpc, ops_pb2, ops_pb2_grpc
from grpc import aio

from services.common.config import load_profile
from services.common.isolation import MPS_LIMIT_ENV, mps_daemon, mps_limit_mib, service_environment
from tests.gpu.support import card, profile_for_card, service_env
from tests.helpers import ServiceProcess

pytestmark = pytest.mark.gpu

MIB = 2**20

# Allocates below its limit, then past it, with no torch cap of its own: only MPS can stop it.
PROBE = """
import json, sys, torch
below, beyond = int(sys.argv[1]), int(sys.argv[2])
free, total = torch.cuda.mem_get_info(0)
result = {"free": free, "total": total}
held = torch.empty(below, dtype=torch.uint8, device="cuda:0")
result["below"] = "ok"
try:
    more = torch.empty(beyond, dtype=torch.uint8, device="cuda:0")
    result["beyond"] = "ok"
except torch.OutOfMemoryError:
    result["beyond"] = "oom"
print(json.dumps(result), flush=True)
"""


@pytest.fixture(autouse=True)
def needs_mps() -> None:
    daemon = mps_daemon()
    if not daemon.running:
        pytest.skip(f"MPS not running: {daemon.detail}")


def mps_profile() -> Any:
    return load_profile(profile_for_card(), environ={"FORGE_PROFILE__ISOLATION": "mps"})


async def probe(env: dict[str, str], below: int, beyond: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, str(below), str(beyond), env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, out
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def test_the_pinned_limit_stops_a_client_at_its_slice(record_figure: Callable[..., Any]) -> None:
    profile = mps_profile()
    limit = mps_limit_mib(profile, "embed") * MIB
    base = {k: v for k, v in os.environ.items() if k != MPS_LIMIT_ENV}
    limited = await probe({**base, **service_environment(profile, "embed")}, limit - 1024 * MIB, 2048 * MIB)
    assert limited["below"] == "ok" and limited["beyond"] == "oom", limited
    assert limited["free"] <= limit, f"cudaMemGetInfo free {limited['free']} above the MPS limit {limit}"
    record_figure(
        "mps-probe", limit, limit - 1024 * MIB, "allocation below the limit ok, 2 GiB more: OOM", "mps"
    )
    # The same allocations without the limit succeed: the limit, not the card, stopped the client.
    if card()[1] > 3 * limit:
        unlimited = await probe(base, limit - 1024 * MIB, 2048 * MIB)
        assert unlimited["beyond"] == "ok", unlimited


async def test_embed_serves_inside_its_mps_limit(tmp_path: Path, record_figure: Callable[..., Any]) -> None:
    profile = mps_profile()
    env = service_env(tmp_path, profile_for_card(), FORGE_PROFILE__ISOLATION="mps")
    process = ServiceProcess("embed", env={**env, **service_environment(profile, "embed")})
    try:
        listening = await process.start()
        await process.next_event("serving", timeout_s=300)
        async with aio.insecure_channel(f"127.0.0.1:{listening['port']}") as channel:
            stub = embed_pb2_grpc.EmbedServiceStub(channel)
            texts = [f"MPS load sentence {i} " * 40 for i in range(128)]
            replies = await asyncio.gather(
                *(stub.Embed(embed_pb2.EmbedRequest(texts=texts)) for _ in range(8))
            )
            assert all(r.dimension == 384 for r in replies)
            usage = (
                await ops_pb2_grpc.OpsServiceStub(channel).GetGpuStats(ops_pb2.GetGpuStatsRequest())
            ).usage
        limit = mps_limit_mib(profile, "embed") * MIB
        record_figure("embed", usage.slice_bytes, usage.used_bytes, "NVML per process under MPS", "mps")
        assert 0 < usage.used_bytes <= limit and not usage.over_slice
    finally:
        await process.kill()
