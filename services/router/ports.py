"""The router's domain vocabulary, and what its use cases need from the world, as plain Python.

The use cases (`rag`, `ingest`, `documents`) see only these protocols; the adapters in
`services/router/clients/` implement them over gRPC (LLM, embeddings, guardrails) and Milvus
(the vector index). So the use cases hold no gRPC or Milvus code and are unit-tested on their own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Protocol

from services.common.errors import DeadlineExceeded, Unavailable
from services.common.sampling import SamplingParams

# The sampling parameters of one generation (None = the LLM service's default).
Sampling = SamplingParams


class Priority(IntEnum):
    """Admission queue and LLM scheduling priority; lower is served first."""

    INTERACTIVE = 0
    BATCH = 1


class Stage(StrEnum):
    INPUT = "input"
    RETRIEVAL = "retrieval"
    OUTPUT = "output"


class Decision(StrEnum):
    ALLOW = "allow"
    REDACT = "redact"
    BLOCK = "block"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class RailFinding:
    rail: str
    category: str
    score: float
    start: int
    end: int
    redacted: bool = False  # masked in the verdict's redacted_text


@dataclass(frozen=True)
class Grounding:
    """A text the checked text may repeat without redaction (a retrieved chunk, a caller's message)."""

    source: str
    text: str


@dataclass(frozen=True)
class RailVerdict:
    decision: Decision
    findings: tuple[RailFinding, ...]
    redacted_text: str
    # Rails that failed open: the decision was taken without them.
    unchecked_rails: tuple[str, ...] = ()

    def text_to_use(self, original: str) -> str:
        return self.redacted_text if self.decision is Decision.REDACT and self.redacted_text else original


@dataclass(frozen=True)
class GenerateRequest:
    """One generation, as the router asks the LLM for it."""

    messages: tuple[Message, ...]
    sampling: Sampling
    priority: Priority
    request_id: str
    timeout_s: float


@dataclass(frozen=True)
class Generated:
    """One streamed piece of the answer; the last one has a finish reason and the token counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class ContextChunk:
    """A stored chunk of a document, as search finds it and as it goes into a prompt."""

    document_id: str
    chunk_index: int
    score: float  # cosine similarity, in [-1, 1]; higher is closer
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk of a document to store, with its vector."""

    document_id: str
    chunk_index: int
    text: str
    vector: Sequence[float]
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class ChatInput:
    messages: tuple[Message, ...]
    collection: str = ""
    top_k: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    priority: Priority = Priority.INTERACTIVE
    disable_retrieval: bool = False


@dataclass(frozen=True)
class Citation:
    document_id: str
    chunk_index: int
    score: float
    number: int = 0  # the source's [number] in the prompt
    cited: bool = False  # the answer carries its [number] marker
    matched: bool = False  # the answer has no markers; this source holds its figures (prompt.py)


@dataclass(frozen=True)
class Verdict:
    """Why a rail blocked a chat, for the caller."""

    decision: Decision
    stage: Stage
    findings: tuple[RailFinding, ...]
    message: str
    turn: int | None = None  # input stage: the index of the caller's message that was blocked


@dataclass(frozen=True)
class ChatDelta:
    text: str


@dataclass(frozen=True)
class ChatEnd:
    citations: tuple[Citation, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    degraded: bool = False
    verdict: Verdict | None = None
    finish_reason: FinishReason = FinishReason.STOP
    # What a degraded answer went without: "retrieval", "guardrails", "rail:<name>", ...
    degraded_reasons: tuple[str, ...] = ()
    model: str = ""  # the served model that wrote the answer; empty when none was asked


ChatEvent = ChatDelta | ChatEnd


@dataclass(frozen=True)
class SearchResult:
    chunks: list[ContextChunk]
    degraded: bool  # a fail-open rail was down: the chunks went unchecked
    degraded_reasons: tuple[str, ...] = ()


class IndexUnavailable(Unavailable):
    """The vector index failed (connection, server error, a file held by another process)."""

    def __init__(self, message: str) -> None:
        super().__init__("milvus", message)


class IndexTimeout(DeadlineExceeded):
    """A vector-index call ran out of the time it was given (the caller's deadline, split)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"milvus: {message}")


# What a use case that can answer without retrieval treats as "retrieval failed".
INDEX_FAILURES = (IndexUnavailable, IndexTimeout)


class Guardrails(Protocol):
    async def check(
        self, text: str, stage: Stage, timeout_s: float, grounding: Sequence[Grounding] = ()
    ) -> RailVerdict: ...


class Embeddings(Protocol):
    async def embed(self, texts: Sequence[str], query: bool, timeout_s: float) -> list[list[float]]: ...


@dataclass(frozen=True)
class ModelInfo:
    """What the router needs to know of the served model: its name (for the prompt's style and
    the caller's summary) and its context window (for the prompt's budget)."""

    name: str
    max_context_tokens: int


class Llm(Protocol):
    async def model_info(self, timeout_s: float) -> ModelInfo: ...

    async def count_tokens(self, messages: Sequence[Message], timeout_s: float) -> int: ...

    async def count_text_tokens(self, text: str, timeout_s: float) -> int: ...

    def generate(self, request: GenerateRequest) -> AsyncGenerator[Generated, None]:
        """Streams the answer. Closing the iterator early cancels the downstream call (the LLM
        aborts the request)."""
        ...


class VectorIndex(Protocol):
    """Tenant-scoped document chunks. Every call is bounded by `timeout_s` and raises
    `IndexTimeout` past it, `IndexUnavailable` when the index fails.

    Whole versions: a document is always one version, whole, to every reader, whatever fails or is
    killed when; a write that returned is durable (it survives a kill of the router or the index
    server), so no call to make it so exists."""

    async def search(
        self, tenant: str, collection: str, vector: Sequence[float], top_k: int, timeout_s: float
    ) -> list[ContextChunk]:
        """The tenant's `top_k` chunks closest to `vector`, most similar first; [] for an unknown
        collection."""
        ...

    async def replace_document(
        self,
        tenant: str,
        collection: str,
        document_id: str,
        chunks: Sequence[ChunkRecord],
        timeout_s: float,
    ) -> int:
        """Store `chunks` as the whole document, replacing an earlier version; the count stored.
        Before it returns, readers see the old version or the new one, never a mix; after it, the
        new one, durably. On an error the document is whole, old or new (an error after the
        commit point may still leave the new one)."""
        ...

    async def delete_documents(
        self, tenant: str, collection: str, document_ids: Sequence[str], timeout_s: float
    ) -> tuple[int, int]:
        """(documents that existed, chunks deleted)."""
        ...

    async def list_collections(self, tenant: str, timeout_s: float) -> list[tuple[str, int]]:
        """(collection, the tenant's chunk count), by name."""
        ...
