"""AdminService: the operator's view of the router — admission capacity and the GPU ledger of
the whole mesh (every service's slice against its actual use, and who else holds GPU memory)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping

from forge.v1 import ops_pb2, ops_pb2_grpc, router_pb2, router_pb2_grpc
from grpc import aio

from services.common.gpu import descendant_pids, read_gpu_snapshot
from services.common.ops import gpu_stats_message
from services.router.admission import AdmissionController

log = logging.getLogger(__name__)

Context = aio.ServicerContext[object, object]
GPU_STATS_TIMEOUT_S = 3.0


async def gpu_stats(channel: aio.Channel, timeout_s: float) -> ops_pb2.GetGpuStatsResponse:
    """One service's own view of its GPU use (its OpsService)."""
    stub = ops_pb2_grpc.OpsServiceStub(channel)
    return await stub.GetGpuStats(ops_pb2.GetGpuStatsRequest(), timeout=timeout_s)


class AdminServicer(router_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        profile: str,
        admission: AdmissionController,
        service_channels: Callable[[], Mapping[str, aio.Channel]],
    ) -> None:
        self._profile = profile
        self._admission = admission
        self._service_channels = service_channels

    async def GetCapacity(
        self, request: router_pb2.GetCapacityRequest, context: Context
    ) -> router_pb2.GetCapacityResponse:
        await self._admission.refresh()
        snap = self._admission.snapshot()
        return router_pb2.GetCapacityResponse(
            profile=self._profile,
            max_sessions=snap.max_sessions,
            active_sessions=snap.active_sessions,
            queue_enabled=snap.queue_enabled,
            queue_capacity=snap.queue_capacity,
            queued_requests=snap.queued_requests,
            admitted_total=snap.admitted_total,
            rejected_total=snap.rejected_total,
            tenants=[
                router_pb2.TenantUsage(
                    tenant=t.tenant, active_sessions=t.active_sessions, max_sessions=t.max_sessions
                )
                for t in snap.tenants
            ],
            admission_mode=snap.mode,
            replica_id=snap.replica_id,
            replica_active_sessions=snap.replica_active_sessions,
            replicas=snap.replicas,
        )

    async def GetGpuStats(
        self, request: router_pb2.AdminServiceGetGpuStatsRequest, context: Context
    ) -> router_pb2.AdminServiceGetGpuStatsResponse:
        channels = self._service_channels()
        names = list(channels)
        answers = await asyncio.gather(
            *(gpu_stats(channels[n], GPU_STATS_TIMEOUT_S) for n in names), return_exceptions=True
        )
        response = router_pb2.AdminServiceGetGpuStatsResponse()
        # The router's own children (e.g. a Milvus Lite server) are the router's too.
        router_pids = await asyncio.to_thread(descendant_pids, os.getpid())
        service_of_pid = dict.fromkeys((os.getpid(), *router_pids), "router")
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, ops_pb2.GetGpuStatsResponse):
                response.services.append(answer.usage)
                for pid in (answer.usage.pid, *answer.usage.child_pids):
                    service_of_pid[pid] = answer.usage.service
            else:
                log.warning("GPU stats of %s unavailable: %s", name, answer)
                response.unreachable_services.append(name)
        # The device view is read here once, so every process is attributed in one snapshot; a
        # process no service claims (another tenant's job, a stray notebook) keeps an empty name.
        snapshot = await asyncio.to_thread(read_gpu_snapshot)
        response.gpu.CopyFrom(gpu_stats_message(snapshot, service_of_pid))
        return response
