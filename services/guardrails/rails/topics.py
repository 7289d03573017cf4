"""Topics: allowed and denied topics from the policy, each described by example sentences. A text
whose embedding is close to a denied topic's examples is a hit; with allowed topics configured, a
text close to none of them is a hit too (category topic.off_topic)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.common.encoder import Vectors
from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit, payload_span
from services.guardrails.rails.classifier import Embed


@dataclass
class TopicsRail:
    name: str
    embed: Embed
    threshold: float
    denied: dict[str, list[str]]
    allowed: dict[str, list[str]]
    repeat: int = 1
    kind: str = "topics"
    _denied: list[tuple[str, Vectors]] = field(init=False, repr=False)
    _allowed: list[tuple[str, Vectors]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._denied = [(name, self.embed(examples)) for name, examples in self.denied.items()]
        self._allowed = [(name, self.embed(examples)) for name, examples in self.allowed.items()]

    def scan(self, doc: Normalized) -> list[Hit]:
        views = doc.views()
        vectors = self.embed([text for text, _ in views])
        for _ in range(self.repeat - 1):  # policy `repeat`: a real, slower rail for timeout tests
            vectors = self.embed([text for text, _ in views])
        hits: list[Hit] = []
        for topic, examples in self._denied:
            sims = vectors @ examples.T  # cosine: both sides are L2-normalised
            best_view = int(np.argmax(sims.max(axis=1)))
            score = float(sims[best_view].max())
            if score >= self.threshold:
                start, end = payload_span(doc, views[best_view][1])
                hits.append(Hit(category=f"topic.{topic}", score=score, start=start, end=end))
        if self._allowed:
            closest = max(float((vectors[:1] @ examples.T).max()) for _, examples in self._allowed)
            if closest < self.threshold:
                hits.append(
                    Hit(category="topic.off_topic", score=1.0 - closest, start=0, end=len(doc.original))
                )
        return hits
