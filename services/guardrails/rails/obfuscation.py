"""Obfuscation: reports what normalisation undid (invisible characters, encoded payloads). The
decoded payloads themselves are scanned by the content rails."""

from __future__ import annotations

from dataclasses import dataclass

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit


@dataclass
class ObfuscationRail:
    name: str
    threshold: float
    kind: str = "obfuscation"

    def scan(self, doc: Normalized) -> list[Hit]:
        hits = [
            Hit(category=f"obfuscation.{p.kind}", score=1.0, start=p.start, end=p.end) for p in doc.payloads
        ]
        if doc.invisible_removed:
            # Score grows with the number of hidden characters: one stray BOM is not an attack.
            score = min(1.0, doc.invisible_removed / 4)
            hits.append(Hit(category="obfuscation.invisible", score=score, start=0, end=len(doc.original)))
        return [h for h in hits if h.score >= self.threshold]
