"""OpsService: every process answers for itself (GPU slice and use, identity, settings)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from forge.v1 import common_pb2, ops_pb2, ops_pb2_grpc
from grpc import aio

from services.common.gpu import OVER_SLICE, GpuSnapshot, SliceUsage, read_gpu_snapshot, slice_usage


def gpu_stats_message(snapshot: GpuSnapshot, service_of_pid: Mapping[int, str]) -> common_pb2.GpuStats:
    message = common_pb2.GpuStats(
        gpu_available=snapshot.available, detail=snapshot.detail, driver_version=snapshot.driver_version
    )
    for dev in snapshot.devices:
        device = message.devices.add(
            index=dev.index,
            name=dev.name,
            uuid=dev.uuid,
            memory_total_bytes=dev.total_bytes,
            memory_used_bytes=dev.used_bytes,
            memory_free_bytes=dev.free_bytes,
            unified_memory=dev.unified_memory,
        )
        if dev.utilization_percent is not None:
            device.utilization_percent = dev.utilization_percent
        for proc in dev.processes:
            device.processes.add(
                pid=proc.pid, used_memory_bytes=proc.used_bytes, service=service_of_pid.get(proc.pid, "")
            )
    return message


def usage_message(usage: SliceUsage) -> common_pb2.ServiceGpuUsage:
    return common_pb2.ServiceGpuUsage(
        service=usage.service,
        pid=usage.pid,
        slice_fraction=usage.slice_fraction,
        slice_bytes=usage.slice_bytes,
        used_bytes=usage.used_bytes,
        over_slice=usage.over_slice,
        device=usage.device,
        child_pids=usage.child_pids,
    )


class DependencyState(Protocol):
    @property
    def serving(self) -> bool: ...

    @property
    def detail(self) -> str: ...


class Dependencies(Protocol):
    """What a process that waits for other services says of them in GetInfo (the router)."""

    def waiting_for(self) -> Sequence[str]: ...

    def dependencies(self) -> Mapping[str, DependencyState]: ...


class OpsServicer(ops_pb2_grpc.OpsServiceServicer):
    def __init__(
        self,
        service: str,
        version: str,
        profile: str,
        isolation: str,
        slice_fraction: float,
        compute_device: Callable[[], str],
        settings: Callable[[], Mapping[str, str]],
        dependencies: Dependencies | None = None,
    ) -> None:
        self._service = service
        self._version = version
        self._profile = profile
        self._isolation = isolation
        self._slice_fraction = slice_fraction
        self._compute_device = compute_device
        self._settings = settings
        self._dependencies = dependencies
        self._started_at = datetime.now()

    async def GetGpuStats(
        self, request: ops_pb2.GetGpuStatsRequest, context: aio.ServicerContext[object, object]
    ) -> ops_pb2.GetGpuStatsResponse:
        device = self._compute_device()

        def read() -> tuple[GpuSnapshot, SliceUsage]:  # NVML calls and the /proc scan block
            snapshot = read_gpu_snapshot()
            return snapshot, slice_usage(self._service, self._slice_fraction, device, snapshot)

        snapshot, usage = await asyncio.to_thread(read)
        if snapshot.available:
            OVER_SLICE.observe(usage)
        return ops_pb2.GetGpuStatsResponse(
            gpu=gpu_stats_message(snapshot, dict.fromkeys(usage.pids, self._service)),
            usage=usage_message(usage),
        )

    async def GetInfo(
        self, request: ops_pb2.GetInfoRequest, context: aio.ServicerContext[object, object]
    ) -> ops_pb2.GetInfoResponse:
        response = ops_pb2.GetInfoResponse(
            service=self._service,
            version=self._version,
            profile=self._profile,
            pid=os.getpid(),
            isolation=self._isolation,
            settings=dict(self._settings()),
        )
        response.started_at.FromDatetime(self._started_at.astimezone())
        if self._dependencies is not None:
            response.waiting_for.extend(self._dependencies.waiting_for())
            for name, state in self._dependencies.dependencies().items():
                response.dependencies[name].CopyFrom(
                    ops_pb2.DependencyStatus(serving=state.serving, detail=state.detail)
                )
        return response
