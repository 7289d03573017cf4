"""What the client hands back: plain frozen dataclasses, so callers never touch protobufs."""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    """Why an answer ended."""

    UNSPECIFIED = "unspecified"
    STOP = "stop"  # end of sequence or a stop string
    LENGTH = "length"  # max_tokens or the model's context was reached
    BLOCKED = "blocked"  # a guardrail ended the stream (the summary's verdict says why)


class Priority(enum.Enum):
    """Who waits less when the router queues: interactive chats go before batch jobs."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass(frozen=True)
class Message:
    """One turn of a conversation; role is "system", "user" or "assistant"."""

    role: str
    content: str


@dataclass(frozen=True)
class ChatDelta:
    """New answer text since the previous delta."""

    text: str


@dataclass(frozen=True)
class Citation:
    """A source the answer was given (highest score first): the chunk, its number in the prompt
    (the answer refers to it as `[number]`) and whether the answer did; `matched`: the answer
    marked no source and this one holds its figures (the router's attribution)."""

    document_id: str
    chunk_index: int
    score: float
    number: int = 0
    cited: bool = False
    matched: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Finding:
    """What one guardrail found, over the character span [start, end) of the text it checked."""

    rail: str
    category: str
    score: float
    start: int
    end: int
    redacted: bool


@dataclass(frozen=True)
class Verdict:
    """A guardrail's decision on a chat: which stage ("input", "retrieval", "output") and why.
    `message` is safe to show the end user; `turn` is the blocked message's index for input."""

    decision: str
    stage: str
    message: str
    findings: tuple[Finding, ...] = ()
    turn: int | None = None


@dataclass(frozen=True)
class ChatSummary:
    """The end of a chat: citations, token usage, the trace id, whether the answer went without a
    failed dependency (`degraded`, with what it went without) and the verdict when a rail blocked."""

    citations: tuple[Citation, ...] = ()
    usage: Usage = field(default_factory=Usage)
    trace_id: str = ""
    finish_reason: FinishReason = FinishReason.UNSPECIFIED
    degraded: bool = False
    degraded_reasons: tuple[str, ...] = ()
    verdict: Verdict | None = None
    model: str = ""  # the model that wrote the answer

    @property
    def blocked(self) -> bool:
        return self.finish_reason is FinishReason.BLOCKED

    @property
    def cited(self) -> tuple[Citation, ...]:
        """The sources the answer refers to by their [number]."""
        return tuple(c for c in self.citations if c.cited)

    @property
    def used(self) -> tuple[Citation, ...]:
        """The sources the answer used: those it cites, or, where it cites none, those holding its
        figures (`matched`)."""
        return tuple(c for c in self.citations if c.cited or c.matched)


@dataclass(frozen=True)
class SearchHit:
    document_id: str
    chunk_index: int
    score: float
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    """The chunks a chat would use. `degraded`: a fail-open guardrails service was down and the
    hits went unchecked by the retrieval rail."""

    hits: tuple[SearchHit, ...] = ()
    degraded: bool = False
    degraded_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """A document to ingest. Ingesting the same id again replaces the whole document."""

    id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestProgress:
    """One stored document (durable once reported), with the running totals of the whole call."""

    document_id: str
    chunk_count: int
    documents_ingested: int
    chunks_ingested: int


@dataclass(frozen=True)
class IngestResult:
    documents: int
    chunks: int


@dataclass(frozen=True)
class DeleteResult:
    documents: int
    chunks: int


@dataclass(frozen=True)
class Collection:
    name: str
    chunk_count: int


@dataclass(frozen=True)
class TenantUsage:
    tenant: str
    active_sessions: int
    max_sessions: int  # 0 = no per-tenant cap


@dataclass(frozen=True)
class Capacity:
    """The router's admission state: sessions, the queue, admissions and rejections by reason."""

    profile: str
    max_sessions: int
    active_sessions: int
    queue_enabled: bool
    queue_capacity: int
    queued_requests: int
    admitted_total: int
    rejected_total: Mapping[str, int] = field(default_factory=dict)
    tenants: tuple[TenantUsage, ...] = ()  # tenants with sessions on the replica that answered
    # "in_process" (one router), "shared" (replicas share the limit through Redis: max/active are
    # global) or "shared_fallback" (Redis unavailable: this replica's share and its own sessions).
    admission_mode: str = "in_process"
    replica_id: str = ""
    replica_active_sessions: int = 0
    replicas: int = 1


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_bytes: int
    service: str  # "" for a process that is not Forge's


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization_percent: int | None
    unified_memory: bool
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class ServiceGpuUsage:
    """One service's GPU slice against what its process (and children) really hold."""

    service: str
    pid: int
    slice_fraction: float
    slice_bytes: int
    used_bytes: int
    over_slice: bool
    device: str
    child_pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class GpuStats:
    """The mesh's GPU ledger. `unreachable_services` did not answer, so the ledger is partial."""

    gpu_available: bool
    detail: str
    driver_version: str
    devices: tuple[GpuDevice, ...] = ()
    services: tuple[ServiceGpuUsage, ...] = ()
    unreachable_services: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dependency:
    serving: bool
    detail: str


@dataclass(frozen=True)
class ServerInfo:
    """What the router says about itself (OpsService.GetInfo)."""

    service: str
    version: str
    profile: str
    pid: int
    started_at: datetime.datetime | None
    isolation: str
    settings: Mapping[str, str] = field(default_factory=dict)
    waiting_for: tuple[str, ...] = ()
    dependencies: Mapping[str, Dependency] = field(default_factory=dict)
