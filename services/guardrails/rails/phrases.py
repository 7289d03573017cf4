"""Policy phrases: case-insensitive patterns the deployment forbids (typically on model output,
e.g. a leaked system prompt marker or an internal code name)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit


@dataclass
class PhrasesRail:
    name: str
    phrases: list[str]
    kind: str = "phrases"
    _compiled: list[re.Pattern[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        compiled = []
        for phrase in self.phrases:
            try:
                compiled.append(re.compile(phrase, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(
                    f"rails.{self.name}.phrases: {phrase!r} is not a valid regex: {exc}"
                ) from exc
        self._compiled = compiled

    def scan(self, doc: Normalized) -> list[Hit]:
        hits: list[Hit] = []
        for pattern in self._compiled:
            for m in pattern.finditer(doc.text):
                start, end = doc.span_in_original(m.start(), m.end())
                hits.append(Hit(category="policy_phrase", score=1.0, start=start, end=end, label="POLICY"))
        return hits
