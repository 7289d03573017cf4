"""`forge status` as logic: from the services' answers (real messages, or the error a call
raised) to the model, its JSON and its screen; where each service is looked for. The calls
themselves run against real services in tests/integration/test_forge_status.py and the e2e mesh."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import click
import grpc
import pytest
from forge.v1 import common_pb2, ops_pb2, router_pb2
from grpc import aio
from grpc_health.v1 import health_pb2
from rich.console import Console

from services.cli.status import addresses
from services.cli.status_gather import (
    UNREACHABLE,
    MeshStatus,
    ServiceStatus,
    capacity_of,
    describe_error,
    gpu_of,
    service_status,
)
from services.cli.status_view import duration, render

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=UTC)
SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
NOT_SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING)
REFUSED = aio.AioRpcError(
    grpc.StatusCode.UNAVAILABLE,
    aio.Metadata(),
    aio.Metadata(),
    details="failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052: "
    "Failed to connect to remote host: Connection refused",
)


def info(service: str, started: datetime, **settings: str) -> ops_pb2.GetInfoResponse:
    reply = ops_pb2.GetInfoResponse(service=service, version="1.2.3", pid=4242, settings=settings)
    reply.started_at.FromDatetime(started)
    return reply


def text_of(status: MeshStatus) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(render(status))
    return console.export_text()


def test_a_serving_service_shows_what_it_runs_its_version_and_uptime() -> None:
    s = service_status(
        "llm",
        "127.0.0.1:50052",
        SERVING,
        info("llm", NOW - timedelta(minutes=5), engine="vllm", model="SmolLM2-135M-Instruct", device="cpu"),
        NOW,
    )
    assert s.serving and s.health == "SERVING" and not s.error
    assert (s.runs, s.device, s.version, s.pid) == ("vllm SmolLM2-135M-Instruct", "cpu", "1.2.3", 4242)
    assert s.uptime_s == pytest.approx(300)


def test_a_service_that_does_not_answer_is_unreachable_with_the_reason_in_one_line() -> None:
    s = service_status("llm", "127.0.0.1:50052", REFUSED, REFUSED, NOW)
    assert s.health == UNREACHABLE and not s.serving
    assert s.error == "UNAVAILABLE: connection refused (nothing listens there)"
    slow = aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, aio.Metadata(), aio.Metadata(), details="Deadline Exceeded"
    )
    assert describe_error(slow) == "DEADLINE_EXCEEDED: Deadline Exceeded"


def test_health_answered_but_info_refused_keeps_the_health_and_says_why() -> None:
    denied = aio.AioRpcError(
        grpc.StatusCode.PERMISSION_DENIED, aio.Metadata(), aio.Metadata(), details="admin key needed"
    )
    s = service_status("router", "127.0.0.1:50051", SERVING, denied, NOW)
    assert s.serving and s.error == "GetInfo: PERMISSION_DENIED: admin key needed"


def test_the_router_waiting_shows_what_for_and_its_dependencies() -> None:
    reply = info("router", NOW)
    reply.waiting_for.extend(["llm"])
    reply.dependencies["llm"].CopyFrom(ops_pb2.DependencyStatus(serving=False, detail="UNAVAILABLE: down"))
    reply.dependencies["embed"].CopyFrom(ops_pb2.DependencyStatus(serving=True, detail="SERVING"))
    s = service_status("router", "127.0.0.1:50051", NOT_SERVING, reply, NOW)
    assert s.health == "NOT_SERVING" and s.waiting_for == ("llm",)
    assert list(s.dependencies) == ["embed", "llm"] and not s.dependencies["llm"].serving


def capacity_reply() -> router_pb2.GetCapacityResponse:
    return router_pb2.GetCapacityResponse(
        profile="cpu",
        max_sessions=4,
        active_sessions=3,
        queue_enabled=True,
        queue_capacity=8,
        queued_requests=2,
        admitted_total=40,
        rejected_total={"SESSION_LIMIT": 5, "QUEUE_FULL": 1, "TENANT_QUOTA": 0, "QUEUE_TIMEOUT": 0},
        tenants=[router_pb2.TenantUsage(tenant="acme", active_sessions=3, max_sessions=3)],
    )


def test_capacity_keeps_sessions_queue_and_every_rejection_reason() -> None:
    c = capacity_of(capacity_reply())
    assert (c.active_sessions, c.max_sessions, c.queued, c.queue_capacity) == (3, 4, 2, 8)
    assert c.rejected_total == {"QUEUE_FULL": 1, "QUEUE_TIMEOUT": 0, "SESSION_LIMIT": 5, "TENANT_QUOTA": 0}
    assert c.tenants[0].tenant == "acme"


def gpu_reply(available: bool) -> router_pb2.AdminServiceGetGpuStatsResponse:
    reply = router_pb2.AdminServiceGetGpuStatsResponse(
        gpu=common_pb2.GpuStats(gpu_available=available, detail="" if available else "NVML: no driver"),
        unreachable_services=["guardrails"],
    )
    if available:
        reply.gpu.devices.add(
            index=0, name="NVIDIA H200", memory_total_bytes=140 << 30, memory_used_bytes=30 << 30
        )
        reply.services.add(
            service="llm",
            device="cuda:0",
            slice_fraction=0.5,
            slice_bytes=70 << 30,
            used_bytes=75 << 30,
            over_slice=True,
        )
    return reply


def mesh(**fields: object) -> MeshStatus:
    services = (
        service_status("llm", "127.0.0.1:50052", REFUSED, REFUSED, NOW),
        service_status("embed", "127.0.0.1:50053", SERVING, info("embed", NOW, model="bge-small"), NOW),
    )
    return MeshStatus(NOW, services, **fields)  # type: ignore[arg-type]


def test_ok_only_when_every_service_serves_and_unreachable_merges_the_gpu_ledgers_list() -> None:
    status = mesh(gpu=gpu_of(gpu_reply(False)))
    assert not status.ok
    assert status.unreachable == ["llm", "guardrails"]
    serving = MeshStatus(NOW, (ServiceStatus("embed", "a:1", "SERVING"),))
    assert serving.ok and serving.unreachable == []


def test_json_has_the_documented_keys() -> None:
    status = mesh(capacity=capacity_of(capacity_reply()), gpu=gpu_of(gpu_reply(True)))
    data = json.loads(json.dumps(status.to_json()))
    assert set(data) == {
        "version",
        "ok",
        "checked_at",
        "services",
        "capacity",
        "gpu",
        "unreachable",
        "errors",
    }
    assert data["ok"] is False and data["checked_at"] == "2025-05-01T12:00:00+00:00"
    assert list(data["services"]) == ["llm", "embed"]
    assert data["services"]["llm"]["health"] == "UNREACHABLE"
    assert set(data["services"]["embed"]) == {
        "address", "health", "error", "version", "pid", "uptime_s", "runs", "device", "waiting_for",
        "dependencies",
    }  # fmt: skip
    assert data["capacity"]["rejected_total"]["SESSION_LIMIT"] == 5 and data["capacity"]["queued"] == 2
    assert data["gpu"]["slices"][0] == {
        "service": "llm", "device": "cuda:0", "slice_fraction": 0.5, "slice_bytes": 70 << 30,
        "used_bytes": 75 << 30, "over_slice": True,
    }  # fmt: skip
    assert data["unreachable"] == ["llm", "guardrails"]


def test_the_screen_shows_health_sessions_rejections_slices_and_the_unreachable() -> None:
    status = mesh(capacity=capacity_of(capacity_reply()), gpu=gpu_of(gpu_reply(True)))
    text = text_of(status)
    assert "1 of 2 services not SERVING" in text
    assert "UNREACHABLE" in text and "llm: UNAVAILABLE: connection refused" in text
    assert "Sessions 3 / 4 in use (profile cpu); queue 2 / 8; admitted 40" in text
    assert "Rejected: QUEUE_FULL 1, QUEUE_TIMEOUT 0, SESSION_LIMIT 5, TENANT_QUOTA 0" in text
    assert "GPU 0 NVIDIA H200: 30.0 GiB / 140.0 GiB used" in text
    assert "107% OVER" in text
    assert "Unreachable: llm, guardrails" in text


def test_without_a_gpu_or_a_router_the_screen_says_so() -> None:
    assert "GPU: none (NVML: no driver); the services compute on the CPU" in text_of(
        mesh(gpu=gpu_of(gpu_reply(False)))
    )
    text = text_of(mesh(errors={"capacity": "UNAVAILABLE: down", "gpu": "UNAVAILABLE: down"}))
    assert "Admission: unknown (UNAVAILABLE: down)" in text and "GPU: unknown (UNAVAILABLE: down)" in text
    all_up = MeshStatus(NOW, (ServiceStatus("embed", "a:1", "SERVING"),))
    assert "all 1 services SERVING" in text_of(all_up) and "Unreachable: none" in text_of(all_up)


def test_addresses_default_ports_plus_offset_then_overrides() -> None:
    found = addresses(("llm", "router", "unknown"), "127.0.0.1", 1000, None, ())
    assert found == {"llm": "127.0.0.1:51052", "router": "127.0.0.1:51051"}
    found = addresses(("llm", "router"), "127.0.0.1", 0, "10.0.0.2:7000", ("llm=10.0.0.3:9", "extra=h:1"))
    assert found == {"llm": "10.0.0.3:9", "router": "10.0.0.2:7000", "extra": "h:1"}
    with pytest.raises(click.BadParameter):
        addresses(("llm",), "127.0.0.1", 0, None, ("llm:9",))


def test_durations_read_at_a_glance() -> None:
    assert [duration(s) for s in (None, 3, 240, 7500, 90000)] == [
        "-",
        "3 s",
        "4 min",
        "2 h 05 min",
        "1 d 1 h",
    ]
