"""What `forge status` knows about a mesh, and how it finds out: each service's health and
OpsService.GetInfo, and the router's AdminService (GetCapacity, GetGpuStats). The model and its
builders take the answers (a message, or the error a call raised) and hold no gRPC; `gather`
is the thin adapter that makes the calls."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from forge.v1 import ops_pb2, ops_pb2_grpc, router_pb2, router_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import Dialer

SERVING = "SERVING"
UNREACHABLE = "UNREACHABLE"
# Bumped when a key of the JSON changes meaning or goes away (new keys may appear without it).
JSON_VERSION = 1
GPU_LEDGER_EXTRA_S = 4.0

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Target:
    """One service to ask: where it listens, how to dial it, what to present (an API key)."""

    name: str
    address: str
    dialer: Dialer
    metadata: Metadata = ()
    # Why it cannot be dialled at all (no client certificate): then it is not asked.
    cannot_dial: str = ""


@dataclass(frozen=True)
class Dependency:
    serving: bool
    detail: str


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    # SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN (grpc.health.v1), or UNREACHABLE (no answer).
    health: str
    # Why it is UNREACHABLE, or why GetInfo failed when health answered ("" when all is well).
    error: str = ""
    version: str = ""
    pid: int | None = None
    uptime_s: float | None = None
    # What it runs, in words where it says ("vllm SmolLM2-135M-Instruct", "policy 3").
    runs: str = ""
    device: str = ""
    # What it waits for before it serves (the router), while it does.
    waiting_for: tuple[str, ...] = ()
    # Its dependencies as it last heard them (the router: llm, embed, guardrails).
    dependencies: Mapping[str, Dependency] = field(default_factory=dict)

    @property
    def serving(self) -> bool:
        return self.health == SERVING


@dataclass(frozen=True)
class TenantSessions:
    tenant: str
    active_sessions: int
    max_sessions: int  # 0 = no per-tenant cap


@dataclass(frozen=True)
class Capacity:
    profile: str
    max_sessions: int
    active_sessions: int
    queue_enabled: bool
    queue_capacity: int
    queued: int
    admitted_total: int
    rejected_total: Mapping[str, int]
    tenants: tuple[TenantSessions, ...] = ()
    admission_mode: str = "in_process"
    replica_id: str = ""
    replica_active_sessions: int = 0
    replicas: int = 1


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_total_bytes: int
    memory_used_bytes: int


@dataclass(frozen=True)
class GpuSlice:
    service: str
    device: str
    slice_fraction: float
    slice_bytes: int
    used_bytes: int
    over_slice: bool


@dataclass(frozen=True)
class GpuLedger:
    available: bool
    # Why there is no GPU, as the services see it (when not available).
    detail: str
    devices: tuple[GpuDevice, ...] = ()
    slices: tuple[GpuSlice, ...] = ()
    # Services the router asked for their GPU use that did not answer.
    unreachable: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeshStatus:
    checked_at: datetime
    services: tuple[ServiceStatus, ...]
    capacity: Capacity | None = None
    gpu: GpuLedger | None = None
    # Why capacity or the GPU ledger is missing ("capacity": "router unreachable", ...).
    errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every service SERVING."""
        return all(s.serving for s in self.services)

    @property
    def unreachable(self) -> list[str]:
        """Services that did not answer: their health check, or the router's GPU question."""
        names = [s.name for s in self.services if s.health == UNREACHABLE]
        if self.gpu is not None:
            names += [n for n in self.gpu.unreachable if n not in names]
        return names

    def to_json(self) -> dict[str, Any]:
        """The `forge status --json` object (keys documented in the README)."""
        return {
            "version": JSON_VERSION,
            "ok": self.ok,
            "checked_at": self.checked_at.isoformat(timespec="seconds"),
            "services": {s.name: _service_json(s) for s in self.services},
            "capacity": None if self.capacity is None else asdict(self.capacity),
            "gpu": None if self.gpu is None else asdict(self.gpu),
            "unreachable": self.unreachable,
            "errors": dict(self.errors),
        }


def _service_json(s: ServiceStatus) -> dict[str, Any]:
    data = asdict(s)
    del data["name"]
    data["waiting_for"] = list(s.waiting_for)
    data["dependencies"] = {k: asdict(v) for k, v in s.dependencies.items()}
    return data


# --- from answers to the model (no gRPC calls) ------------------------------------------------


def describe_error(error: BaseException) -> str:
    """A failed call in words: "UNAVAILABLE: connection refused", "DEADLINE_EXCEEDED: ..."."""
    if isinstance(error, aio.AioRpcError | grpc.Call):
        code = error.code()
        name = code.name if code else "ERROR"
        details = (error.details() or "").strip()
        # gRPC's text for a port nobody listens on runs to three lines of addresses.
        if code == grpc.StatusCode.UNAVAILABLE and "Connection refused" in details:
            return f"{name}: connection refused (nothing listens there)"
        first = details.splitlines()[0] if details else ""
        return f"{name}: {first}" if first else name
    if isinstance(error, TimeoutError):
        return "no answer in time"
    return f"{type(error).__name__}: {error}"


def runs_of(info: ops_pb2.GetInfoResponse) -> str:
    """What a service runs, from the settings it shows in GetInfo."""
    s = info.settings
    parts = [s[k] for k in ("engine", "model") if s.get(k)]
    if s.get("policy_version"):
        parts.append(f"policy {s['policy_version']}")
    return " ".join(parts)


def service_status(
    name: str,
    address: str,
    health: health_pb2.HealthCheckResponse | BaseException,
    info: ops_pb2.GetInfoResponse | BaseException,
    now: datetime,
) -> ServiceStatus:
    if isinstance(health, BaseException):
        return ServiceStatus(name, address, UNREACHABLE, error=describe_error(health))
    state = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    if isinstance(info, BaseException):
        return ServiceStatus(name, address, state, error=f"GetInfo: {describe_error(info)}")
    uptime = None
    if info.HasField("started_at"):
        uptime = max(0.0, (now - info.started_at.ToDatetime(tzinfo=UTC)).total_seconds())
    return ServiceStatus(
        name,
        address,
        state,
        version=info.version,
        pid=info.pid or None,
        uptime_s=uptime,
        runs=runs_of(info),
        device=info.settings.get("device", ""),
        waiting_for=tuple(info.waiting_for),
        dependencies={k: Dependency(v.serving, v.detail) for k, v in sorted(info.dependencies.items())},
    )


def capacity_of(reply: router_pb2.GetCapacityResponse) -> Capacity:
    return Capacity(
        profile=reply.profile,
        max_sessions=reply.max_sessions,
        active_sessions=reply.active_sessions,
        queue_enabled=reply.queue_enabled,
        queue_capacity=reply.queue_capacity,
        queued=reply.queued_requests,
        admitted_total=reply.admitted_total,
        rejected_total=dict(sorted(reply.rejected_total.items())),
        tenants=tuple(TenantSessions(t.tenant, t.active_sessions, t.max_sessions) for t in reply.tenants),
        admission_mode=reply.admission_mode or "in_process",
        replica_id=reply.replica_id,
        replica_active_sessions=reply.replica_active_sessions,
        replicas=reply.replicas or 1,
    )


def gpu_of(reply: router_pb2.AdminServiceGetGpuStatsResponse) -> GpuLedger:
    gpu = reply.gpu
    return GpuLedger(
        available=gpu.gpu_available,
        detail=gpu.detail,
        devices=tuple(
            GpuDevice(d.index, d.name, d.memory_total_bytes, d.memory_used_bytes) for d in gpu.devices
        ),
        slices=tuple(
            GpuSlice(u.service, u.device, u.slice_fraction, u.slice_bytes, u.used_bytes, u.over_slice)
            for u in reply.services
        ),
        unreachable=tuple(reply.unreachable_services),
    )


# --- the calls ------------------------------------------------------------------------------------


async def _answer(call: Any) -> Any:
    """The call's reply, or the error it raised (kept, to be shown)."""
    try:
        return await call
    except (aio.AioRpcError, TimeoutError, OSError) as exc:
        return exc


async def probe(target: Target, timeout_s: float) -> ServiceStatus:
    """One service's health and GetInfo, asked at once."""
    if target.cannot_dial:
        return ServiceStatus(target.name, target.address, UNREACHABLE, error=target.cannot_dial)
    async with target.dialer.channel(target.address, target.name) as channel:
        health, info = await asyncio.gather(
            _answer(
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
                )
            ),
            _answer(
                ops_pb2_grpc.OpsServiceStub(channel).GetInfo(
                    ops_pb2.GetInfoRequest(), metadata=target.metadata, timeout=timeout_s
                )
            ),
        )
    return service_status(target.name, target.address, health, info, datetime.now(UTC))


async def gather(targets: Sequence[Target], router: Target | None, timeout_s: float) -> MeshStatus:
    """Every target's health and identity, and from `router` the capacity and the GPU ledger."""
    services = asyncio.gather(*(probe(t, timeout_s) for t in targets))
    if router is None:
        return MeshStatus(datetime.now(UTC), tuple(await services), errors={"router": "not asked"})
    async with router.dialer.channel(router.address, router.name) as channel:
        admin = router_pb2_grpc.AdminServiceStub(channel)
        statuses, capacity, gpu = await asyncio.gather(
            services,
            _answer(
                admin.GetCapacity(
                    router_pb2.GetCapacityRequest(), metadata=router.metadata, timeout=timeout_s
                )
            ),
            _answer(
                admin.GetGpuStats(
                    router_pb2.AdminServiceGetGpuStatsRequest(),
                    metadata=router.metadata,
                    # The router asks every service in turn (3 s each at most) before it answers.
                    timeout=timeout_s + GPU_LEDGER_EXTRA_S,
                )
            ),
        )
    errors = {}
    if isinstance(capacity, BaseException):
        errors["capacity"] = describe_error(capacity)
    if isinstance(gpu, BaseException):
        errors["gpu"] = describe_error(gpu)
    return MeshStatus(
        datetime.now(UTC),
        tuple(statuses),
        capacity=None if isinstance(capacity, BaseException) else capacity_of(capacity),
        gpu=None if isinstance(gpu, BaseException) else gpu_of(gpu),
        errors=errors,
    )
