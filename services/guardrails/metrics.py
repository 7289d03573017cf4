"""Prometheus metrics of the guardrails service."""

from prometheus_client import Counter, Histogram

CHECKS = Counter(
    "forge_guardrails_checks", "Check calls answered, by stage and decision.", ["stage", "decision"]
)
RAIL_SECONDS = Histogram(
    "forge_guardrails_rail_duration_seconds",
    "Time of one rail on one text.",
    ["rail"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
RAIL_FAILURES = Counter(
    "forge_guardrails_rail_failures",
    "Rails that failed or ran out of time.",
    ["rail", "reason", "on_failure"],
)
FINDINGS = Counter(
    "forge_guardrails_findings", "Findings reported, by rail and category.", ["rail", "category"]
)
RAIL_QUEUE_SECONDS = Histogram(
    "forge_guardrails_rail_queue_seconds",
    "Time a text waited for one of the rail's threads (not counted in its timeout).",
    ["rail"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REFUSED = Counter(
    "forge_guardrails_refused",
    "Checks refused with RESOURCE_EXHAUSTED because a rail's queue was full, by rail.",
    ["rail"],
)
KEPT = Counter(
    "forge_guardrails_kept",
    "Entities a redacting rail found but kept because the request's grounding holds them.",
    ["rail", "category"],
)
