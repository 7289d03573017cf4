"""Prometheus collector for GPU memory, read from NVML at scrape time (the seed's
`forge_gpu_memory_used_bytes`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.gpu import read_gpu_snapshot, slice_usage


class GpuMemoryCollector(Collector):
    def __init__(self, service: str, slice_fraction: float, compute_device: Callable[[], str]) -> None:
        self._service = service
        self._slice_fraction = slice_fraction
        self._compute_device = compute_device

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snapshot = read_gpu_snapshot()
        usage = slice_usage(self._service, self._slice_fraction, self._compute_device(), snapshot)
        available = GaugeMetricFamily("forge_gpu_available", "1 when this process sees a GPU through NVML.")
        available.add_metric([], 1.0 if snapshot.available else 0.0)
        yield available
        used = GaugeMetricFamily(
            "forge_gpu_memory_used_bytes", "GPU memory held by this service's process.", labels=["service"]
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
        for dev in snapshot.devices:
            total.add_metric([str(dev.index)], dev.total_bytes)
            dev_used.add_metric([str(dev.index)], dev.used_bytes)
        yield total
        yield dev_used
