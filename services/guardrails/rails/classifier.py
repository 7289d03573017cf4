"""A rail over a trained head (injection or harm): scores the normalised text and every decoded
payload, and reports the highest score with the span it concerns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit, payload_span

Embed = Callable[[list[str]], npt.NDArray[np.float32]]


class Head(Protocol):
    def score(self, texts: list[str]) -> npt.NDArray[np.float64]: ...


@dataclass
class ClassifierRail:
    name: str
    kind: str
    category: str
    head: Head
    threshold: float
    repeat: int = 1

    def scan(self, doc: Normalized) -> list[Hit]:
        views = doc.views()
        scores = self.head.score([text for text, _ in views])
        for _ in range(self.repeat - 1):  # policy `repeat`: a real, slower rail for timeout tests
            scores = self.head.score([text for text, _ in views])
        best = int(np.argmax(scores))
        score = float(scores[best])
        if score < self.threshold:
            return []
        start, end = payload_span(doc, views[best][1])
        return [Hit(category=self.category, score=score, start=start, end=end)]
