from __future__ import annotations

import types
from typing import Any

import pytest

from services.common import gpu
from services.common.gpu import GpuDeviceInfo, GpuProcessInfo, GpuSnapshot, read_gpu_snapshot, slice_usage


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

    def __init__(self, unified: bool) -> None:
        super().__init__()
        self.unified = unified

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return "dev0"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        return [
            types.SimpleNamespace(pid=101, usedGpuMemory=3 * 2**30),
            types.SimpleNamespace(pid=202, usedGpuMemory=None),
        ]

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
