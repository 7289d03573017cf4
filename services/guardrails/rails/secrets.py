"""Secrets: API keys, tokens and private keys by pattern (plus an entropy check for generic
`password = ...` assignments). Redaction masks them like PII."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit

# (label, pattern, score). Group "v" (if present) is the secret itself; otherwise the whole match.
_PATTERNS: tuple[tuple[str, str, float], ...] = (
    (
        "PRIVATE_KEY",
        r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        1.0,
    ),
    ("AWS_ACCESS_KEY", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b", 0.95),
    ("AWS_SECRET_KEY", r"(?i)aws.{0,20}?secret.{0,20}?[=:]\s*['\"]?(?P<v>[A-Za-z0-9/+]{40})\b", 0.95),
    ("GITHUB_TOKEN", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b", 0.99),
    ("GITLAB_TOKEN", r"\bglpat-[A-Za-z0-9_-]{20,}\b", 0.99),
    ("SLACK_TOKEN", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", 0.99),
    ("OPENAI_KEY", r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}\b", 0.9),
    ("ANTHROPIC_KEY", r"\bsk-ant-[A-Za-z0-9_-]{20,}\b", 0.99),
    ("STRIPE_KEY", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b", 0.99),
    ("GOOGLE_API_KEY", r"\bAIza[0-9A-Za-z_-]{35}\b", 0.95),
    ("HF_TOKEN", r"\bhf_[A-Za-z0-9]{30,}\b", 0.95),
    ("JWT", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b", 0.9),
    ("BEARER_TOKEN", r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9._~+/-]{20,}=*)", 0.8),
    ("CONNECTION_STRING", r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:(?P<v>[^\s@/]{3,})@[^\s]+", 0.85),
)
_ASSIGNMENT = re.compile(
    r"(?i)(?<![a-z])(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
    r"\s*[=:]\s*['\"]?(?P<v>[^\s'\"]{8,})"
)
_COMPILED = tuple((label, re.compile(p), s) for label, p, s in _PATTERNS)


def shannon_entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


@dataclass
class SecretsRail:
    name: str
    threshold: float
    kind: str = "secrets"

    def scan(self, doc: Normalized) -> list[Hit]:
        hits: list[Hit] = []
        for label, pattern, score in _COMPILED:
            for m in pattern.finditer(doc.text):
                group = "v" if "v" in pattern.groupindex and m.group("v") else 0
                hits.append(self._hit(doc, label, score, m.start(group), m.end(group)))
        for m in _ASSIGNMENT.finditer(doc.text):
            value = m.group("v")
            # Entropy separates "password=hunter2xyz!Q9" from "password = required" prose.
            entropy = shannon_entropy(value)
            score = min(1.0, entropy / 4.0)
            if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and entropy >= 3.0:
                hits.append(self._hit(doc, "GENERIC_SECRET", score, m.start("v"), m.end("v")))
        return [h for h in hits if h.score >= self.threshold]

    @staticmethod
    def _hit(doc: Normalized, label: str, score: float, start: int, end: int) -> Hit:
        o_start, o_end = doc.span_in_original(start, end)
        return Hit(category=f"secret.{label.lower()}", score=score, start=o_start, end=o_end, label=label)
