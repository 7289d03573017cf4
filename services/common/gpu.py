"""GPU stats from NVML (nvidia-ml-py), or a plain "no GPU" where there is none.

On unified-memory devices (Jetson Thor) NVML answers NOT_SUPPORTED for memory figures; there the
device's figures come from per-process sums and /proc/meminfo, and the device is flagged unified.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_nvml_lock = threading.Lock()
_nvml_state: dict[str, Any] = {"initialised": False, "error": None}


@dataclass(frozen=True)
class GpuProcessInfo:
    pid: int
    used_bytes: int


@dataclass(frozen=True)
class GpuDeviceInfo:
    index: int
    name: str
    uuid: str
    total_bytes: int
    used_bytes: int
    free_bytes: int
    utilization_percent: int | None
    unified_memory: bool
    processes: list[GpuProcessInfo] = field(default_factory=list)


@dataclass(frozen=True)
class GpuSnapshot:
    available: bool
    detail: str
    driver_version: str = ""
    devices: list[GpuDeviceInfo] = field(default_factory=list)

    def used_by_pid(self, pid: int) -> int:
        return sum(p.used_bytes for d in self.devices for p in d.processes if p.pid == pid)

    def total_bytes(self) -> int:
        return sum(d.total_bytes for d in self.devices)


def _nvml() -> Any:
    """The initialised pynvml module, or raise RuntimeError saying why there is none."""
    with _nvml_lock:
        import pynvml

        if not _nvml_state["initialised"]:
            if _nvml_state["error"] is not None:
                raise RuntimeError(_nvml_state["error"])
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                _nvml_state["error"] = f"NVML unavailable ({exc})"
                raise RuntimeError(_nvml_state["error"]) from exc
            _nvml_state["initialised"] = True
        return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _meminfo_bytes(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _processes(nvml: Any, handle: Any) -> list[GpuProcessInfo]:
    seen: dict[int, int] = {}
    for query in (nvml.nvmlDeviceGetComputeRunningProcesses, nvml.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            for proc in query(handle):
                used = proc.usedGpuMemory if isinstance(proc.usedGpuMemory, int) else 0
                seen[proc.pid] = max(seen.get(proc.pid, 0), used)
        except nvml.NVMLError:
            continue
    return [GpuProcessInfo(pid, used) for pid, used in sorted(seen.items())]


def _device(nvml: Any, index: int) -> GpuDeviceInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    processes = _processes(nvml, handle)
    try:
        util: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except nvml.NVMLError:
        util = None
    try:
        mem = nvml.nvmlDeviceGetMemoryInfo(handle)
        total, used, free, unified = int(mem.total), int(mem.used), int(mem.free), False
    except nvml.NVMLError_NotSupported:
        # Unified memory: the GPU shares system RAM, so the system's figures are the device's.
        total = _meminfo_bytes("MemTotal")
        used = sum(p.used_bytes for p in processes)
        free = _meminfo_bytes("MemAvailable")
        unified = True
    return GpuDeviceInfo(
        index=index,
        name=_text(nvml.nvmlDeviceGetName(handle)),
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        total_bytes=total,
        used_bytes=used,
        free_bytes=free,
        utilization_percent=util,
        unified_memory=unified,
        processes=processes,
    )


def read_gpu_snapshot() -> GpuSnapshot:
    """Every visible GPU now; never raises: without a GPU, `available` is False and `detail` says why."""
    try:
        nvml = _nvml()
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            return GpuSnapshot(available=False, detail="no GPU: NVML reports no devices")
        devices = [_device(nvml, i) for i in range(count)]
        driver = _text(nvml.nvmlSystemGetDriverVersion())
    except RuntimeError as exc:
        return GpuSnapshot(available=False, detail=f"no GPU: {exc}")
    except Exception as exc:  # NVML errors mid-read (device lost, driver reload)
        log.warning("NVML read failed: %s", exc)
        return GpuSnapshot(available=False, detail=f"no GPU: NVML read failed ({exc})")
    unified = any(d.unified_memory for d in devices)
    detail = (
        "unified memory: device memory from per-process sums and /proc/meminfo"
        if unified
        else f"{len(devices)} GPU(s) via NVML"
    )
    return GpuSnapshot(available=True, detail=detail, driver_version=driver, devices=devices)


@dataclass(frozen=True)
class SliceUsage:
    """One service's declared slice against what its process holds on the GPU."""

    service: str
    pid: int
    slice_fraction: float
    slice_bytes: int
    used_bytes: int
    device: str

    @property
    def over_slice(self) -> bool:
        # A service with a zero slice that holds GPU memory is over it too.
        return self.used_bytes > self.slice_bytes


def slice_usage(
    service: str, slice_fraction: float, device: str, snapshot: GpuSnapshot, pid: int | None = None
) -> SliceUsage:
    pid = os.getpid() if pid is None else pid
    slice_bytes = int(slice_fraction * snapshot.total_bytes()) if snapshot.available else 0
    return SliceUsage(service, pid, slice_fraction, slice_bytes, snapshot.used_by_pid(pid), device)
