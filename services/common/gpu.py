"""GPU stats from NVML (nvidia-ml-py), or a plain "no GPU" where there is none.

On unified-memory devices (Jetson Thor) NVML answers NOT_SUPPORTED for memory figures; there the
device's figures come from per-process sums and /proc/meminfo, and the device is flagged unified.

A service's use is what NVML reports for its pid and its child processes (vLLM's engine core is a
child of the LLM service and holds the LLM's memory). A service holding more than its slice is
"over slice": `OVER_SLICE` logs a warning when that starts and a note when it ends, once each.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection
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
        return self.used_by_pids({pid})

    def used_by_pids(self, pids: Collection[int]) -> int:
        return sum(p.used_bytes for d in self.devices for p in d.processes if p.pid in pids)

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


def descendant_pids(pid: int, proc: Path = Path("/proc")) -> tuple[int, ...]:
    """Every live process below `pid` (children, grandchildren, ...), from /proc; () where /proc
    cannot be read."""
    children: dict[int, list[int]] = {}
    try:
        entries = list(proc.iterdir())
    except OSError:
        return ()
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and child != pid:
                found.add(child)
                todo.append(child)
    return tuple(sorted(found))


@dataclass(frozen=True)
class SliceUsage:
    """One service's declared slice against what its process (and its children) hold on the GPU."""

    service: str
    pid: int
    slice_fraction: float
    slice_bytes: int
    used_bytes: int
    device: str
    child_pids: tuple[int, ...] = ()

    @property
    def over_slice(self) -> bool:
        # A service with a zero slice that holds GPU memory is over it too.
        return self.used_bytes > self.slice_bytes

    @property
    def pids(self) -> tuple[int, ...]:
        return (self.pid, *self.child_pids)


def slice_usage(
    service: str,
    slice_fraction: float,
    device: str,
    snapshot: GpuSnapshot,
    pid: int | None = None,
    child_pids: Collection[int] | None = None,
) -> SliceUsage:
    """`child_pids` None: this process's descendants, read from /proc (only when there is a GPU)."""
    pid = os.getpid() if pid is None else pid
    if child_pids is None:
        child_pids = descendant_pids(pid) if snapshot.available else ()
    children = tuple(sorted(set(child_pids) - {pid}))
    slice_bytes = int(slice_fraction * snapshot.total_bytes()) if snapshot.available else 0
    used = snapshot.used_by_pids({pid, *children})
    return SliceUsage(service, pid, slice_fraction, slice_bytes, used, device, children)


class OverSliceAlarm:
    """Remembers, per service, whether it was over its slice, and logs only the transitions: a
    warning when a service goes over, an info line when it is back within. Every reader of the
    ledger (scrapes, GetGpuStats, the server's watch) reports here, so each transition is logged
    once however often it is observed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._over: dict[str, bool] = {}

    def observe(self, usage: SliceUsage) -> bool:
        """Record `usage`; True when it starts an over-slice episode (the warning was logged)."""
        with self._lock:
            was_over = self._over.get(usage.service, False)
            self._over[usage.service] = usage.over_slice
        if usage.over_slice and not was_over:
            log.warning(
                "GPU slice exceeded: %s (pid %s) holds %.0f MiB, its slice is %.0f MiB (%.2f of the device)",
                usage.service,
                ",".join(str(p) for p in usage.pids),
                usage.used_bytes / 2**20,
                usage.slice_bytes / 2**20,
                usage.slice_fraction,
            )
            return True
        if was_over and not usage.over_slice:
            log.info(
                "GPU slice: %s is back within its slice (%.0f of %.0f MiB)",
                usage.service,
                usage.used_bytes / 2**20,
                usage.slice_bytes / 2**20,
            )
        return False

    def is_over(self, service: str) -> bool:
        with self._lock:
            return self._over.get(service, False)


OVER_SLICE = OverSliceAlarm()
