"""Redaction with Presidio's anonymizer: each redacted span becomes <LABEL>; text outside the
spans is left exactly as it was."""

from __future__ import annotations

from collections.abc import Sequence

from services.guardrails.rails.base import Hit


def redact(text: str, hits: Sequence[Hit]) -> str:
    if not hits:
        return text
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    results = [
        RecognizerResult(entity_type=h.label or h.category.upper(), start=h.start, end=h.end, score=h.score)
        for h in hits
        if h.end > h.start
    ]
    operators = {
        r.entity_type: OperatorConfig("replace", {"new_value": f"<{r.entity_type}>"}) for r in results
    }
    engine = AnonymizerEngine()  # type: ignore[no-untyped-call]
    return str(engine.anonymize(text=text, analyzer_results=results, operators=operators).text)
