"""On a real GPU, each service in its own process as `forge up` runs them: embed and guardrails
stay inside their slices under load (NVML per-process figures, read through each service's
OpsService.GetGpuStats), the router's ledger names them and lists a process that is not Forge's,
and a process that over-allocates fails alone (its torch OOM stays in it) while the services keep
answering."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from forge.v1 import (
    embed_pb2,
    embed_pb2_grpc,
    guardrails_pb2,
    guardrails_pb2_grpc,
    ops_pb2,
    ops_pb2_grpc,
    router_pb2,
)
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import load_profile
from services.router.admission import AdmissionController
from services.router.api import admin
from tests.gpu.support import card, profile_for_card
from tests.helpers import servicer_context

pytestmark = pytest.mark.gpu

LONG_TEXT = "Maintenance log: the pump on line three was inspected and its seals replaced. " * 60


async def embed_load(address: str, rounds: int) -> int:
    async with aio.insecure_channel(address) as channel:
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        texts = [f"{i} {LONG_TEXT}" for i in range(128)]
        answered = 0
        for _ in range(rounds):
            replies = await asyncio.gather(
                *(stub.Embed(embed_pb2.EmbedRequest(texts=texts)) for _ in range(8))
            )
            answered += sum(len(r.embeddings) == len(texts) for r in replies)
        return answered


async def guardrails_load(address: str, rounds: int) -> int:
    async with aio.insecure_channel(address) as channel:
        stub = guardrails_pb2_grpc.GuardrailsServiceStub(channel)
        request = guardrails_pb2.CheckRequest(text=LONG_TEXT * 4, stage=guardrails_pb2.STAGE_INPUT)
        answered = 0
        for _ in range(rounds):
            replies = await asyncio.gather(*(stub.Check(request) for _ in range(16)))
            answered += sum(r.decision != guardrails_pb2.DECISION_UNSPECIFIED for r in replies)
        return answered


async def usage(address: str) -> Any:
    async with aio.insecure_channel(address) as channel:
        return (await ops_pb2_grpc.OpsServiceStub(channel).GetGpuStats(ops_pb2.GetGpuStatsRequest())).usage


async def sample_peaks(addresses: dict[str, str], stop: asyncio.Event, peaks: dict[str, Any]) -> None:
    """The ledger's figure for each service every 0.2 s; keeps the largest."""
    while not stop.is_set():
        for name, address in addresses.items():
            now = await usage(address)
            if name not in peaks or now.used_bytes > peaks[name].used_bytes:
                peaks[name] = now
        await asyncio.sleep(0.2)


async def serving(address: str) -> bool:
    async with aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def test_embed_and_guardrails_stay_inside_their_slices_under_load(
    gpu_services: dict[str, str], record_figure: Callable[..., Any]
) -> None:
    profile = load_profile(profile_for_card(), environ={})
    stop = asyncio.Event()
    peaks: dict[str, Any] = {}
    sampler = asyncio.create_task(sample_peaks(gpu_services, stop, peaks))
    started = time.monotonic()
    embedded, checked = await asyncio.gather(
        embed_load(gpu_services["embed"], rounds=6), guardrails_load(gpu_services["guardrails"], rounds=6)
    )
    stop.set()
    await sampler
    assert embedded == 6 * 8 and checked == 6 * 16
    for name in ("embed", "guardrails"):
        final = await usage(gpu_services[name])
        peak = max(peaks[name].used_bytes, final.used_bytes)
        assert final.device == "cuda:0", f"{name} computes on {final.device}"
        assert final.slice_fraction == pytest.approx(profile.slices.of(name))
        assert peak > 0, f"NVML attributes no memory to {name} (pid {final.pid})"
        record_figure(
            name, final.slice_bytes, peak, f"NVML per process, {time.monotonic() - started:.0f}s load"
        )
        assert peak <= final.slice_bytes, f"{name} peaked at {peak} bytes, its slice is {final.slice_bytes}"
        assert not final.over_slice


HOG = """
import json, sys, torch
fraction, hold, over = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.cuda.set_per_process_memory_fraction(fraction, 0)  # held to a slice, as a Forge service is
held = torch.empty(hold, dtype=torch.uint8, device="cuda:0")
print(json.dumps({"event": "holding", "bytes": hold}), flush=True)
sys.stdin.readline()
try:
    more = torch.empty(over, dtype=torch.uint8, device="cuda:0")
except torch.OutOfMemoryError as exc:
    print(json.dumps({"event": "oom", "error": str(exc)[:300]}), flush=True)
    sys.exit(3)
print(json.dumps({"event": "allocated"}), flush=True)
"""


async def test_an_over_allocating_process_fails_alone(
    gpu_services: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    total = card()[1]
    hog = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOG,
        "0.05",
        str(2**30),
        str(int(0.06 * total)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert hog.stdin is not None and hog.stdout is not None
    try:
        holding = json.loads(await asyncio.wait_for(hog.stdout.readline(), 120))
        assert holding["event"] == "holding"

        # The router's ledger: both services named by pid, the hog listed without a name. (This
        # test process stands in for the router; its own children are not the router's here.)
        monkeypatch.setattr(admin, "descendant_pids", lambda pid: ())
        channels = {name: aio.insecure_channel(address) for name, address in gpu_services.items()}
        try:
            admission = AdmissionController(load_profile(profile_for_card(), environ={}).admission)
            servicer = admin.AdminServicer(profile_for_card(), admission, lambda: channels)
            ledger = await servicer.GetGpuStats(
                router_pb2.AdminServiceGetGpuStatsRequest(), servicer_context()
            )
        finally:
            for channel in channels.values():
                await channel.close()
        assert not ledger.unreachable_services and {s.service for s in ledger.services} == {
            "embed",
            "guardrails",
        }
        names = {p.pid: p.service for d in ledger.gpu.devices for p in d.processes}
        assert names.get(hog.pid) == "", f"the hog (pid {hog.pid}) should be listed unnamed: {names}"
        for service in ledger.services:
            assert names.get(service.pid) == service.service

        # The hog goes over its cap while both services are under load.
        hog.stdin.write(b"go\n")
        await hog.stdin.drain()
        embedded, checked = await asyncio.gather(
            embed_load(gpu_services["embed"], rounds=3), guardrails_load(gpu_services["guardrails"], rounds=3)
        )
        outcome = json.loads(await asyncio.wait_for(hog.stdout.readline(), 120))
        assert outcome["event"] == "oom" and await hog.wait() == 3
        assert embedded == 3 * 8 and checked == 3 * 16
        for address in gpu_services.values():
            assert await serving(address)
            assert not (await usage(address)).over_slice
    finally:
        if hog.returncode is None:
            hog.kill()
            await hog.wait()
