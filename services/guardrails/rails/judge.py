"""Output-harm judge: a pluggable interface. A trained head judged LLM *outputs* at AUC ~0.37 in
the turn-1 trial (it learns topic, not harm), so output harm needs a judge model; the mesh's own
LLM service is the intended backend.

Implemented here: the `Judge` protocol, the rail that turns a verdict into a hit, and a registry
of backends. NOT implemented yet: any real backend. A policy that names a backend not in the
registry is a startup error, never a silent pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit


@dataclass(frozen=True)
class JudgeVerdict:
    harmful_score: float  # 0..1
    category: str = "harm.output"


class Judge(Protocol):
    def judge(self, text: str) -> JudgeVerdict:
        """Synchronous; the engine runs it in a worker thread under the rail's timeout."""


# backend name -> factory. Empty until a backend (e.g. one calling LlmService.Generate) lands.
JUDGE_BACKENDS: dict[str, Callable[[], Judge]] = {}


class UnknownJudgeBackend(ValueError):
    pass


def make_judge(backend: str) -> Judge:
    try:
        return JUDGE_BACKENDS[backend]()
    except KeyError:
        known = ", ".join(JUDGE_BACKENDS) or "none implemented yet"
        raise UnknownJudgeBackend(f"unknown judge backend {backend!r} (known: {known})") from None


@dataclass
class JudgeRail:
    name: str
    judge: Judge
    threshold: float
    kind: str = "judge"

    def scan(self, doc: Normalized) -> list[Hit]:
        verdict = self.judge.judge(doc.text)
        if verdict.harmful_score < self.threshold:
            return []
        return [Hit(category=verdict.category, score=verdict.harmful_score, start=0, end=len(doc.original))]
