"""What every rail is: a name, a kind, and a synchronous `scan` that the engine runs in a worker
thread under the rail's timeout. Scores are in [0, 1]; the rail's threshold decides a hit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.guardrails.normalize import Normalized, Payload


@dataclass(frozen=True)
class Hit:
    """One thing a rail found. [start, end) is a span of the original text; `label` names what a
    redaction shows in its place (e.g. EMAIL_ADDRESS)."""

    category: str
    score: float
    start: int
    end: int
    label: str = ""


class Rail(Protocol):
    name: str
    kind: str

    def scan(self, doc: Normalized) -> list[Hit]:
        """Hits at or above the rail's threshold. Runs in a worker thread; may be slow."""


def payload_span(doc: Normalized, payload: Payload | None) -> tuple[int, int]:
    """The span a whole-text verdict concerns: the encoded payload, or all of the original."""
    if payload is None:
        return 0, len(doc.original)
    return payload.start, payload.end
