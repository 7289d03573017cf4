"""Span recording for tracing tests: finished spans in memory, plus the spans started and not yet
ended (a span left open would never reach an exporter, so an exporter alone cannot show it)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind


class OpenSpans(SpanProcessor):
    """Spans started and not (yet) ended: span id -> (trace id, name)."""

    def __init__(self) -> None:
        self.open: dict[int, tuple[int, str]] = {}
        self.started: dict[int, list[str]] = defaultdict(list)  # trace id -> names, in order
        self._lock = threading.Lock()

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        with self._lock:
            ctx = span.get_span_context()
            self.open[ctx.span_id] = (ctx.trace_id, span.name)
            self.started[ctx.trace_id].append(span.name)

    def on_end(self, span: ReadableSpan) -> None:
        assert span.context is not None
        with self._lock:
            self.open.pop(span.context.span_id, None)

    def open_in(self, trace_id: int | None = None) -> list[str]:
        with self._lock:
            return sorted(name for t, name in self.open.values() if trace_id is None or t == trace_id)

    def started_in(self, trace_id: int) -> list[str]:
        with self._lock:
            return list(self.started.get(trace_id, []))


class SpanRecorder:
    """Install with `for p in recorder.processors: provider.add_span_processor(p)`."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.open = OpenSpans()
        self.processors: list[SpanProcessor] = [self.open, SimpleSpanProcessor(self.exporter)]

    def finished(self, trace_id: int | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if trace_id is None or (s.context is not None and s.context.trace_id == trace_id)
        ]


class Tree:
    """The finished spans of one trace, navigable by parent."""

    def __init__(self, spans: list[ReadableSpan]) -> None:
        self.spans = spans
        self.by_id = {s.context.span_id: s for s in spans if s.context is not None}
        self.children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
        for s in sorted(spans, key=lambda s: s.start_time or 0):
            self.children[s.parent.span_id if s.parent is not None else None].append(s)

    def roots(self) -> list[ReadableSpan]:
        """Spans whose parent is not in the trace (the one root, when the trace is whole)."""
        return [s for s in self.spans if s.parent is None or s.parent.span_id not in self.by_id]

    def kids(
        self, span: ReadableSpan, name: str | None = None, kind: SpanKind | None = None
    ) -> list[ReadableSpan]:
        assert span.context is not None
        return [
            c
            for c in self.children[span.context.span_id]
            if (name is None or c.name == name) and (kind is None or c.kind == kind)
        ]

    def kid(self, span: ReadableSpan, name: str, kind: SpanKind | None = None) -> ReadableSpan:
        found = self.kids(span, name, kind)
        assert len(found) == 1, f"{span.name} -> {name}: {[c.name for c in self.kids(span)]}"
        return found[0]

    def render(self) -> str:
        lines: list[str] = []

        def walk(span: ReadableSpan, depth: int) -> None:
            kind = "" if span.kind is SpanKind.INTERNAL else f" [{span.kind.name.lower()}]"
            ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            lines.append(f"{'  ' * depth}{span.name}{kind} {ms:.1f} ms")
            for child in self.kids(span):
                walk(child, depth + 1)

        for root in self.roots():
            walk(root, 0)
        return "\n".join(lines)
