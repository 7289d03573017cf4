"""What the router's domain logic needs from the other services, as plain Python types.

`downstream.py` implements these over gRPC; the orchestrators (`rag.py`, `ingest.py`) only see
these protocols, so they hold no gRPC code and their logic can be unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from services.router.admission import Priority


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


@dataclass(frozen=True)
class RailVerdict:
    decision: Decision
    findings: tuple[RailFinding, ...]
    redacted_text: str

    def text_to_use(self, original: str) -> str:
        return self.redacted_text if self.decision is Decision.REDACT and self.redacted_text else original


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Generated:
    """One streamed piece of the answer; the last one has a finish reason and the token counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Guardrails(Protocol):
    async def check(self, text: str, stage: Stage, timeout_s: float) -> RailVerdict: ...


class Embeddings(Protocol):
    async def embed(self, texts: Sequence[str], query: bool, timeout_s: float) -> list[list[float]]: ...


class Llm(Protocol):
    async def max_context_tokens(self, timeout_s: float) -> int: ...

    async def count_tokens(self, messages: Sequence[Message], timeout_s: float) -> int: ...

    async def count_text_tokens(self, text: str, timeout_s: float) -> int: ...

    def generate(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        priority: Priority,
        request_id: str,
        timeout_s: float,
    ) -> AsyncGenerator[Generated, None]:
        """Streams the answer. Closing the iterator early cancels the downstream call (the LLM
        aborts the request)."""
        ...
