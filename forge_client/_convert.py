"""Protobuf <-> the client's dataclasses: the one place that knows the wire types."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence

from forge.v1 import common_pb2, guardrails_pb2, ops_pb2, router_pb2

from forge_client.types import (
    Capacity,
    ChatSummary,
    Citation,
    Collection,
    Dependency,
    Document,
    Finding,
    FinishReason,
    GpuDevice,
    GpuProcess,
    GpuStats,
    Message,
    Priority,
    SearchHit,
    SearchResult,
    ServerInfo,
    ServiceGpuUsage,
    TenantUsage,
    Usage,
    Verdict,
)

_FINISH = {
    common_pb2.FINISH_REASON_STOP: FinishReason.STOP,
    common_pb2.FINISH_REASON_LENGTH: FinishReason.LENGTH,
    common_pb2.FINISH_REASON_BLOCKED: FinishReason.BLOCKED,
}
_PRIORITY = {Priority.INTERACTIVE: common_pb2.PRIORITY_INTERACTIVE, Priority.BATCH: common_pb2.PRIORITY_BATCH}


def _enum_name(enum: object, value: int, prefix: str) -> str:
    """DECISION_BLOCK -> "block"; an unknown number (a newer server) -> its number."""
    try:
        name: str = enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def messages(question: str | Sequence[Message | Mapping[str, str]]) -> list[common_pb2.ChatMessage]:
    if isinstance(question, str):
        return [common_pb2.ChatMessage(role="user", content=question)]
    out = []
    for m in question:
        role, content = (m.role, m.content) if isinstance(m, Message) else (m["role"], m["content"])
        out.append(common_pb2.ChatMessage(role=role, content=content))
    return out


def chat_request(
    question: str | Sequence[Message | Mapping[str, str]],
    *,
    collection: str,
    top_k: int,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    stop: Sequence[str],
    priority: Priority,
    retrieval: bool,
) -> router_pb2.ChatRequest:
    params = common_pb2.SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=list(stop)
    )
    return router_pb2.ChatRequest(
        messages=messages(question),
        collection=collection,
        top_k=top_k,
        params=params,
        priority=_PRIORITY[priority],
        disable_retrieval=not retrieval,
    )


def verdict(v: router_pb2.Verdict) -> Verdict:
    return Verdict(
        decision=_enum_name(guardrails_pb2.Decision, v.decision, "DECISION_"),
        stage=_enum_name(guardrails_pb2.Stage, v.stage, "STAGE_"),
        message=v.message,
        findings=tuple(Finding(f.rail, f.category, f.score, f.start, f.end, f.redacted) for f in v.findings),
        turn=v.turn if v.HasField("turn") else None,
    )


def chat_summary(s: router_pb2.ChatSummary) -> ChatSummary:
    return ChatSummary(
        citations=tuple(
            Citation(c.document_id, c.chunk_index, c.score, c.number, c.cited, c.matched) for c in s.citations
        ),
        usage=Usage(s.usage.prompt_tokens, s.usage.completion_tokens),
        trace_id=s.trace_id,
        finish_reason=_FINISH.get(s.finish_reason, FinishReason.UNSPECIFIED),
        degraded=s.degraded,
        degraded_reasons=tuple(s.degraded_reasons),
        verdict=verdict(s.verdict) if s.HasField("verdict") else None,
        model=s.model,
    )


def search_result(r: router_pb2.SearchResponse) -> SearchResult:
    return SearchResult(
        hits=tuple(
            SearchHit(h.document_id, h.chunk_index, h.score, h.text, dict(h.metadata)) for h in r.hits
        ),
        degraded=r.degraded,
        degraded_reasons=tuple(r.degraded_reasons),
    )


def ingest_request(collection: str, doc: Document) -> router_pb2.IngestRequest:
    return router_pb2.IngestRequest(
        collection=collection,
        document=router_pb2.Document(id=doc.id, text=doc.text, metadata=dict(doc.metadata)),
    )


def collections(r: router_pb2.ListCollectionsResponse) -> tuple[Collection, ...]:
    return tuple(Collection(c.name, c.chunk_count) for c in r.collections)


def capacity(r: router_pb2.GetCapacityResponse) -> Capacity:
    return Capacity(
        profile=r.profile,
        max_sessions=r.max_sessions,
        active_sessions=r.active_sessions,
        queue_enabled=r.queue_enabled,
        queue_capacity=r.queue_capacity,
        queued_requests=r.queued_requests,
        admitted_total=r.admitted_total,
        rejected_total=dict(r.rejected_total),
        tenants=tuple(TenantUsage(t.tenant, t.active_sessions, t.max_sessions) for t in r.tenants),
        admission_mode=r.admission_mode or "in_process",
        replica_id=r.replica_id,
        replica_active_sessions=r.replica_active_sessions,
        replicas=r.replicas or 1,
    )


def gpu_stats(r: router_pb2.AdminServiceGetGpuStatsResponse) -> GpuStats:
    g = r.gpu
    return GpuStats(
        gpu_available=g.gpu_available,
        detail=g.detail,
        driver_version=g.driver_version,
        devices=tuple(
            GpuDevice(
                index=d.index,
                name=d.name,
                uuid=d.uuid,
                memory_total_bytes=d.memory_total_bytes,
                memory_used_bytes=d.memory_used_bytes,
                memory_free_bytes=d.memory_free_bytes,
                utilization_percent=d.utilization_percent if d.HasField("utilization_percent") else None,
                unified_memory=d.unified_memory,
                processes=tuple(GpuProcess(p.pid, p.used_memory_bytes, p.service) for p in d.processes),
            )
            for d in g.devices
        ),
        services=tuple(
            ServiceGpuUsage(
                service=s.service,
                pid=s.pid,
                slice_fraction=s.slice_fraction,
                slice_bytes=s.slice_bytes,
                used_bytes=s.used_bytes,
                over_slice=s.over_slice,
                device=s.device,
                child_pids=tuple(s.child_pids),
            )
            for s in r.services
        ),
        unreachable_services=tuple(r.unreachable_services),
    )


def server_info(r: ops_pb2.GetInfoResponse) -> ServerInfo:
    return ServerInfo(
        service=r.service,
        version=r.version,
        profile=r.profile,
        pid=r.pid,
        started_at=r.started_at.ToDatetime(tzinfo=datetime.UTC) if r.HasField("started_at") else None,
        isolation=r.isolation,
        settings=dict(r.settings),
        waiting_for=tuple(r.waiting_for),
        dependencies={k: Dependency(v.serving, v.detail) for k, v in r.dependencies.items()},
    )
