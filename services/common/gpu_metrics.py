"""Prometheus collector for GPU memory, read from NVML at scrape time (the seed's
`forge_gpu_memory_used_bytes`), with the over-slice flag the `ForgeServiceOverGpuSlice` alert
watches (deploy/prometheus/forge-alerts.yaml)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.gpu import OVER_SLICE, OverSliceAlarm, read_gpu_snapshot, slice_usage


class GpuMemoryCollector(Collector):
    def __init__(
        self,
        service: str,
        slice_fraction: float,
        compute_device: Callable[[], str],
        alarm: OverSliceAlarm = OVER_SLICE,
    ) -> None:
        self._service = service
        self._slice_fraction = slice_fraction
        self._compute_device = compute_device
        self._alarm = alarm

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = read_gpu_snapshot()
        usage = slice_usage(self._service, self._slice_fraction, self._compute_device(), snapshot)
        if snapshot.available:  # an NVML hiccup is not "back within the slice"
            self._alarm.observe(usage)
        available = GaugeMetricFamily("forge_gpu_available", "1 when this process sees a GPU through NVML.")
        available.add_metric([], 1.0 if snapshot.available else 0.0)
        yield available
        used = GaugeMetricFamily(
            "forge_gpu_memory_used_bytes",
            "GPU memory held by this service's process and its children (NVML, by pid).",
            labels=["service"],
        )
        used.add_metric([self._service], usage.used_bytes)
        yield used
        slice_bytes = GaugeMetricFamily(
            "forge_gpu_memory_slice_bytes",
            "GPU memory this service may use per its SKU profile.",
            labels=["service"],
        )
        slice_bytes.add_metric([self._service], usage.slice_bytes)
        yield slice_bytes
        over = GaugeMetricFamily(
            "forge_gpu_memory_over_slice",
            "1 when this service holds more GPU memory than its slice.",
            labels=["service"],
        )
        over.add_metric([self._service], 1.0 if usage.over_slice else 0.0)
        yield over
        total = GaugeMetricFamily("forge_gpu_device_memory_total_bytes", "Device memory.", labels=["gpu"])
        dev_used = GaugeMetricFamily(
            "forge_gpu_device_memory_used_bytes", "Device memory in use (all processes).", labels=["gpu"]
        )
        dev_free = GaugeMetricFamily(
            "forge_gpu_device_memory_free_bytes", "Device memory free (all processes).", labels=["gpu"]
        )
        util = GaugeMetricFamily(
            "forge_gpu_device_utilization_ratio",
            "Fraction of the last sample period in which a kernel ran (absent where NVML cannot say).",
            labels=["gpu"],
        )
        unified = GaugeMetricFamily(
            "forge_gpu_device_unified_memory",
            "1 on unified-memory devices (figures from per-process sums and /proc/meminfo).",
            labels=["gpu"],
        )
        for dev in snapshot.devices:
            gpu = str(dev.index)
            total.add_metric([gpu], dev.total_bytes)
            dev_used.add_metric([gpu], dev.used_bytes)
            dev_free.add_metric([gpu], dev.free_bytes)
            if dev.utilization_percent is not None:
                util.add_metric([gpu], dev.utilization_percent / 100.0)
            unified.add_metric([gpu], 1.0 if dev.unified_memory else 0.0)
        yield from (total, dev_used, dev_free, util, unified)
