from __future__ import annotations

import contextlib
import logging
import os
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from forge.v1 import common_pb2, ops_pb2, router_pb2
from grpc import aio

from services.common import gpu, gpu_metrics, ops
from services.common.channels import insecure_channel
from services.common.config import load_profile
from services.common.gpu import (
    GpuDeviceInfo,
    GpuProcessInfo,
    GpuSnapshot,
    OverSliceAlarm,
    read_gpu_snapshot,
    slice_usage,
)
from services.common.gpu_metrics import GpuMemoryCollector
from services.common.ops import gpu_stats_message, usage_message
from services.router.admission import AdmissionController
from services.router.api import admin
from tests.helpers import servicer_context


def test_without_nvml_the_answer_is_no_gpu_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_nvml() -> Any:
        raise RuntimeError("NVML unavailable (NVML Shared Library Not Found)")

    monkeypatch.setattr(gpu, "_nvml", no_nvml)
    snapshot = read_gpu_snapshot()
    assert not snapshot.available and snapshot.devices == []
    assert snapshot.detail.startswith("no GPU: NVML unavailable")


class FakeNvml(types.SimpleNamespace):
    """pynvml's surface as a unified-memory device (Jetson Thor) answers it: no memory figures."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    def __init__(self, unified: bool, processes: list[tuple[int, int | None]] | None = None) -> None:
        super().__init__()
        self.unified = unified
        self.processes = [(101, 3 * 2**30), (202, None)] if processes is None else processes

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return "dev0"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        # pynvml gives None for usedGpuMemory where the driver cannot say (NVML_VALUE_NOT_AVAILABLE).
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: str) -> list[Any]:
        raise self.NVMLError("not supported")

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        return types.SimpleNamespace(gpu=42)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        if self.unified:
            raise self.NVMLError_NotSupported()
        return types.SimpleNamespace(total=80 * 2**30, used=10 * 2**30, free=70 * 2**30)

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        return b"Fake GPU"

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return "GPU-1234"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.1"


def test_discrete_gpu_figures_come_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_nvml", lambda: FakeNvml(unified=False))
    snapshot = read_gpu_snapshot()
    (device,) = snapshot.devices
    assert snapshot.available and not device.unified_memory
    assert (device.total_bytes, device.used_bytes, device.utilization_percent) == (80 * 2**30, 10 * 2**30, 42)
    assert device.name == "Fake GPU" and snapshot.driver_version == "580.1"
    assert [(p.pid, p.used_bytes) for p in device.processes] == [(101, 3 * 2**30), (202, 0)]


def test_unified_memory_falls_back_to_process_sums_and_meminfo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "_nvml", lambda: FakeNvml(unified=True))
    monkeypatch.setattr(
        gpu, "_meminfo_bytes", lambda key: {"MemTotal": 128 * 2**30, "MemAvailable": 100 * 2**30}[key]
    )
    snapshot = read_gpu_snapshot()
    (device,) = snapshot.devices
    assert device.unified_memory and "unified memory" in snapshot.detail
    assert device.total_bytes == 128 * 2**30 and device.free_bytes == 100 * 2**30
    assert device.used_bytes == 3 * 2**30  # the per-process sum


def snapshot_with(pid: int, used: int, total: int = 100) -> GpuSnapshot:
    device = GpuDeviceInfo(0, "g", "u", total, used, total - used, None, False, [GpuProcessInfo(pid, used)])
    return GpuSnapshot(available=True, detail="", devices=[device])


def test_slice_usage_flags_a_service_over_its_slice() -> None:
    within = slice_usage("embed", 0.10, "cuda:0", snapshot_with(pid=7, used=9), pid=7)
    assert (within.slice_bytes, within.used_bytes, within.over_slice) == (10, 9, False)
    over = slice_usage("embed", 0.10, "cuda:0", snapshot_with(pid=7, used=11), pid=7)
    assert over.over_slice
    zero_slice = slice_usage("guardrails", 0.0, "cpu", snapshot_with(pid=7, used=1), pid=7)
    assert zero_slice.over_slice  # a CPU-only service holding GPU memory is over its slice
    other_pid = slice_usage("embed", 0.10, "cuda:0", snapshot_with(pid=8, used=50), pid=7)
    assert other_pid.used_bytes == 0


def test_no_gpu_slice_usage_is_all_zero() -> None:
    usage = slice_usage("embed", 0.05, "cpu", GpuSnapshot(available=False, detail="no GPU"))
    assert (usage.slice_bytes, usage.used_bytes, usage.over_slice) == (0, 0, False)


# --- The ledger: a service's slice against what it and its children hold, foreign processes. ---

GIB = 2**30
SERVICE_PID, ENGINE_CORE_PID, OTHER_SERVICE_PID, FOREIGN_PID = 4000, 4001, 5000, 9999


def forge_and_foreign(monkeypatch: pytest.MonkeyPatch, unified: bool = False) -> GpuSnapshot:
    """One 80 GiB device: the LLM service (whose vLLM engine core, a child, holds the memory),
    the embed service, and a process that is not Forge's."""
    processes: list[tuple[int, int | None]] = [
        (SERVICE_PID, GIB // 2),
        (ENGINE_CORE_PID, 50 * GIB),
        (OTHER_SERVICE_PID, 2 * GIB),
        (FOREIGN_PID, 6 * GIB),
    ]
    monkeypatch.setattr(gpu, "_nvml", lambda: FakeNvml(unified=unified, processes=processes))
    monkeypatch.setattr(
        gpu, "_meminfo_bytes", lambda key: {"MemTotal": 128 * GIB, "MemAvailable": 60 * GIB}[key]
    )
    return read_gpu_snapshot()


def test_a_service_owns_its_child_processes_memory_and_foreign_processes_stay_unnamed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshot = forge_and_foreign(monkeypatch)
    llm = slice_usage("llm", 0.75, "cuda:0", snapshot, pid=SERVICE_PID, child_pids=[ENGINE_CORE_PID])
    assert llm.used_bytes == GIB // 2 + 50 * GIB and llm.slice_bytes == 60 * GIB and not llm.over_slice
    assert llm.pids == (SERVICE_PID, ENGINE_CORE_PID)

    message = gpu_stats_message(snapshot, dict.fromkeys(llm.pids, "llm"))
    (device,) = message.devices
    assert message.gpu_available and device.utilization_percent == 42
    assert (device.memory_total_bytes, device.memory_used_bytes, device.memory_free_bytes) == (
        80 * GIB,
        10 * GIB,
        70 * GIB,
    )
    names = {p.pid: p.service for p in device.processes}
    assert names == {SERVICE_PID: "llm", ENGINE_CORE_PID: "llm", OTHER_SERVICE_PID: "", FOREIGN_PID: ""}
    assert list(usage_message(llm).child_pids) == [ENGINE_CORE_PID]


def test_child_pids_default_to_the_process_tree_under_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = forge_and_foreign(monkeypatch)
    monkeypatch.setattr(gpu, "descendant_pids", lambda pid: (ENGINE_CORE_PID,) if pid == SERVICE_PID else ())
    usage = slice_usage("llm", 0.75, "cuda:0", snapshot, pid=SERVICE_PID)
    assert usage.child_pids == (ENGINE_CORE_PID,) and usage.used_bytes == GIB // 2 + 50 * GIB


def write_proc(root: Path, pid: int, ppid: int, comm: str) -> None:
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560 0 0\n")


def test_descendant_pids_walk_the_whole_tree(tmp_path: Path) -> None:
    write_proc(tmp_path, 1, 0, "init")
    write_proc(tmp_path, 10, 1, "python")
    write_proc(tmp_path, 11, 10, "VLLM::EngineCore")
    write_proc(tmp_path, 12, 11, "odd ) name (x")  # comm may hold spaces and parentheses
    write_proc(tmp_path, 20, 1, "other")
    (tmp_path / "self").mkdir()
    (tmp_path / "30").mkdir()  # ended while we looked: no stat file
    assert gpu.descendant_pids(10, tmp_path) == (11, 12)
    assert gpu.descendant_pids(20, tmp_path) == ()
    assert gpu.descendant_pids(10, tmp_path / "missing") == ()


def test_unified_memory_ledger_sums_processes_and_flags_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = forge_and_foreign(monkeypatch, unified=True)
    message = gpu_stats_message(snapshot, {SERVICE_PID: "llm"})
    (device,) = message.devices
    assert device.unified_memory and "per-process sums and /proc/meminfo" in message.detail
    assert device.memory_total_bytes == 128 * GIB and device.memory_free_bytes == 60 * GIB
    assert device.memory_used_bytes == GIB // 2 + 50 * GIB + 2 * GIB + 6 * GIB
    # Slices on a unified device are fractions of system memory (what the GPU can address).
    embed = slice_usage("embed", 0.04, "cuda:0", snapshot, pid=OTHER_SERVICE_PID, child_pids=())
    assert embed.slice_bytes == int(0.04 * 128 * GIB) and embed.used_bytes == 2 * GIB


def collect(collector: GpuMemoryCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_over_slice_flips_the_metric_and_warns_once_per_transition(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    held = {"bytes": 3 * GIB}

    def snapshot() -> GpuSnapshot:
        pid = os.getpid()
        device = GpuDeviceInfo(
            0,
            "Fake GPU",
            "GPU-1",
            80 * GIB,
            10 * GIB,
            70 * GIB,
            37,
            False,
            [GpuProcessInfo(pid, held["bytes"])],
        )
        return GpuSnapshot(available=True, detail="1 GPU(s) via NVML", devices=[device])

    monkeypatch.setattr(gpu_metrics, "read_gpu_snapshot", snapshot)
    monkeypatch.setattr(gpu, "descendant_pids", lambda pid: ())
    alarm = OverSliceAlarm()
    collector = GpuMemoryCollector("embed", 0.05, lambda: "cuda:0", alarm=alarm)  # slice 4 GiB
    embed = (("service", "embed"),)
    gpu0 = (("gpu", "0"),)

    with caplog.at_level(logging.INFO, logger="services.common.gpu"):
        within = collect(collector)
        assert within[("forge_gpu_memory_over_slice", embed)] == 0.0
        assert within[("forge_gpu_memory_used_bytes", embed)] == 3 * GIB
        assert within[("forge_gpu_memory_slice_bytes", embed)] == int(0.05 * 80 * GIB)
        assert within[("forge_gpu_device_memory_free_bytes", gpu0)] == 70 * GIB
        assert within[("forge_gpu_device_utilization_ratio", gpu0)] == pytest.approx(0.37)
        assert within[("forge_gpu_device_unified_memory", gpu0)] == 0.0
        assert not caplog.records

        held["bytes"] = 5 * GIB
        for _ in range(3):  # every scrape while over: metric 1, one warning only
            assert collect(collector)[("forge_gpu_memory_over_slice", embed)] == 1.0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "embed" in warnings[0].getMessage()
        assert "5120 MiB" in warnings[0].getMessage() and "4096 MiB" in warnings[0].getMessage()
        assert alarm.is_over("embed")

        held["bytes"] = 1 * GIB
        assert collect(collector)[("forge_gpu_memory_over_slice", embed)] == 0.0
        collect(collector)
        back = [r for r in caplog.records if "back within" in r.getMessage()]
        assert len(back) == 1 and not alarm.is_over("embed")
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_no_gpu_metrics_say_so_and_carry_no_device_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        gpu_metrics,
        "read_gpu_snapshot",
        lambda: GpuSnapshot(available=False, detail="no GPU: NVML unavailable"),
    )
    samples = collect(GpuMemoryCollector("embed", 0.0, lambda: "cpu", alarm=OverSliceAlarm()))
    assert samples[("forge_gpu_available", ())] == 0.0
    assert samples[("forge_gpu_memory_over_slice", (("service", "embed"),))] == 0.0
    assert not [name for name, _ in samples if name.startswith("forge_gpu_device_")]
    message = gpu_stats_message(GpuSnapshot(available=False, detail="no GPU: NVML unavailable"), {})
    assert not message.gpu_available and message.detail.startswith("no GPU") and not message.devices


async def test_ops_service_reports_its_own_slice_and_labels_its_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshot = forge_and_foreign(monkeypatch)
    monkeypatch.setattr(ops, "read_gpu_snapshot", lambda: snapshot)
    monkeypatch.setattr(gpu, "descendant_pids", lambda pid: (ENGINE_CORE_PID,))
    servicer = ops.OpsServicer("llm", "0", "h100", "software", 0.75, lambda: "cuda:0", dict)
    reply = await servicer.GetGpuStats(ops_pb2.GetGpuStatsRequest(), servicer_context())
    assert reply.usage.pid == os.getpid() and list(reply.usage.child_pids) == [ENGINE_CORE_PID]
    assert reply.usage.used_bytes == 50 * GIB and reply.usage.slice_bytes == 60 * GIB
    names = {p.pid: p.service for p in reply.gpu.devices[0].processes}
    assert names[ENGINE_CORE_PID] == "llm" and names[FOREIGN_PID] == ""


@contextlib.asynccontextmanager
async def unused_channels(*services: str) -> AsyncIterator[dict[str, aio.Channel]]:
    """A channel per service that is never dialled: the tests answer `admin.gpu_stats` themselves."""
    channels = {name: insecure_channel(f"{name}.invalid:1") for name in services}
    try:
        yield channels
    finally:
        for channel in channels.values():
            await channel.close()


async def ledger(
    profile: str, channels: dict[str, aio.Channel]
) -> router_pb2.AdminServiceGetGpuStatsResponse:
    """The router's AdminService.GetGpuStats over these channels."""
    admission = AdmissionController(load_profile(profile, environ={}).admission)
    servicer = admin.AdminServicer(profile, admission, lambda: channels)
    return await servicer.GetGpuStats(router_pb2.AdminServiceGetGpuStatsRequest(), servicer_context())


async def test_router_ledger_names_every_forge_process_and_lists_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshot = forge_and_foreign(monkeypatch)
    answers: dict[str, ops_pb2.GetGpuStatsResponse | Exception] = {
        "llm": ops_pb2.GetGpuStatsResponse(
            usage=common_pb2.ServiceGpuUsage(
                service="llm", pid=SERVICE_PID, child_pids=[ENGINE_CORE_PID], slice_bytes=60 * GIB
            )
        ),
        "embed": ops_pb2.GetGpuStatsResponse(
            usage=common_pb2.ServiceGpuUsage(service="embed", pid=OTHER_SERVICE_PID, used_bytes=2 * GIB)
        ),
        "guardrails": TimeoutError(),
    }

    async def gpu_stats(channel: aio.Channel, timeout_s: float) -> ops_pb2.GetGpuStatsResponse:
        answer = answers[service_of[channel]]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(admin, "gpu_stats", gpu_stats)
    monkeypatch.setattr(admin, "read_gpu_snapshot", lambda: snapshot)
    monkeypatch.setattr(admin, "descendant_pids", lambda pid: ())
    async with unused_channels(*answers) as channels:
        service_of = {channel: name for name, channel in channels.items()}
        reply = await ledger("h100", channels)
    assert [s.service for s in reply.services] == ["llm", "embed"]
    assert list(reply.unreachable_services) == ["guardrails"]
    names = {p.pid: p.service for p in reply.gpu.devices[0].processes}
    assert names == {SERVICE_PID: "llm", ENGINE_CORE_PID: "llm", OTHER_SERVICE_PID: "embed", FOREIGN_PID: ""}


async def test_router_ledger_without_a_gpu_is_a_clear_no_gpu_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_nvml() -> Any:
        raise RuntimeError("NVML unavailable (NVML Shared Library Not Found)")

    async def gpu_stats(channel: aio.Channel, timeout_s: float) -> ops_pb2.GetGpuStatsResponse:
        return ops_pb2.GetGpuStatsResponse(usage=common_pb2.ServiceGpuUsage(service="embed", device="cpu"))

    monkeypatch.setattr(gpu, "_nvml", no_nvml)
    monkeypatch.setattr(admin, "gpu_stats", gpu_stats)
    async with unused_channels("embed") as channels:
        reply = await ledger("cpu", channels)
    assert not reply.gpu.gpu_available and reply.gpu.detail.startswith("no GPU: NVML unavailable")
    assert not reply.gpu.devices and reply.services[0].service == "embed"
