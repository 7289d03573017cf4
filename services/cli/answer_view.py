"""How `forge ask` shows what came with an answer: the sources it was given (those its [n] markers
cite marked, or where it has none, those holding its figures), the model that wrote it, tokens and
trace; or all of it as JSON (`--json`)."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

from forge_client import ChatSummary


def summary_lines(summary: ChatSummary) -> list[str]:
    lines: list[str] = []
    if summary.verdict is not None:
        lines.append(f"[blocked] {summary.verdict.message}")
    if summary.degraded:
        went_without = ", ".join(summary.degraded_reasons) or "a dependency"
        lines.append(
            f"[degraded] answered without: {went_without} (failed or overloaded); see the router log"
        )
    if summary.citations:
        cited = " ".join(f"[{c.number}]" for c in summary.cited)
        matched = " ".join(f"[{c.number}]" for c in summary.citations if c.matched)
        if cited:
            lines.append(f"Sources (the answer cites {cited}):")
        elif matched:
            lines.append(f"Sources (the answer cites none; its figures are in {matched}):")
        else:
            lines.append("Sources (the answer cites none):")
        for n, c in enumerate(summary.citations, start=1):
            mark = "  <- cited" if c.cited else "  <- holds the answer's figures" if c.matched else ""
            where = f"part {c.chunk_index + 1}, score {c.score:.2f}"
            lines.append(f"[{c.number or n}] {c.document_id} ({where}){mark}")
    model = f"model {summary.model}; " if summary.model else ""
    lines.append(
        f"({model}{summary.usage.prompt_tokens} prompt + {summary.usage.completion_tokens} answer tokens; "
        f"trace {summary.trace_id or '-'})"
    )
    return lines


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON")


def summary_json(question: str, answer: str, summary: ChatSummary) -> str:
    """One JSON object: the question, the whole answer and the whole summary, field for field."""
    document = {"question": question, "answer": answer, "summary": dataclasses.asdict(summary)}
    return json.dumps(document, indent=2, default=_plain, ensure_ascii=False)
