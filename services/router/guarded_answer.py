"""The answer as it streams from the LLM through the output rail: the text is cut into segments
(sentences, lines); each check covers the new text with some of what came before, and the tail is
held back until what follows it was checked too (`OutputWindow`), so nothing leaves unchecked and
an entity split over lines is seen whole; redacted where the rail says so (keeping what the
tenant's chunks and the caller's messages hold: `grounding`); a block ends the answer and closing
the stream aborts the generation. No gRPC here."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Sequence

from opentelemetry import trace

from services.router import metrics
from services.router.deadline import Deadline
from services.router.output_rail import Segmenter
from services.router.output_window import OutputWindow
from services.router.ports import (
    ChatDelta,
    ChatEnd,
    ChatEvent,
    FinishReason,
    GenerateRequest,
    Grounding,
    Llm,
    Message,
    Priority,
    Sampling,
    Stage,
)
from services.router.settings import RouterSettings
from services.router.stages import Degradation, Rails, blocked, verdict_for_caller

tracer = trace.get_tracer("forge.router")


class GuardedAnswer:
    def __init__(self, settings: RouterSettings, llm: Llm, rails: Rails) -> None:
        self._settings = settings
        self._llm = llm
        self._rails = rails

    async def stream(
        self,
        messages: Sequence[Message],
        sampling: Sampling,
        priority: Priority,
        deadline: Deadline,
        degradation: Degradation,
        grounding: Sequence[Grounding] = (),
    ) -> AsyncGenerator[ChatEvent, None]:
        """Deltas of checked text, then a ChatEnd (without citations: the caller adds those)."""
        s = self._settings
        request = GenerateRequest(
            messages=tuple(messages),
            sampling=sampling,
            priority=priority,
            request_id=uuid.uuid4().hex,
            timeout_s=deadline.rest("generation", s.generation_timeout_s),
        )
        segmenter = Segmenter(s.output_segment_chars)
        window = OutputWindow(s.output_window_chars, s.output_window_chars)
        end = ChatEnd()
        with tracer.start_as_current_span(
            "router.generate", attributes={"forge.max_tokens": sampling.max_tokens or 0}
        ) as span:
            started = time.monotonic()
            stream = self._llm.generate(request)
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    segments = segmenter.feed(piece.text)
                    final = piece.finish_reason is not None
                    if final:
                        end = ChatEnd(
                            prompt_tokens=piece.prompt_tokens,
                            completion_tokens=piece.completion_tokens,
                            finish_reason=piece.finish_reason or FinishReason.STOP,
                        )
                        segments.append(segmenter.flush())
                    for segment in segments:
                        window.add(segment)
                    if not window.due(final):
                        continue
                    offset, text = window.window()
                    verdict = None
                    if text.strip():  # only whitespace: nothing a rail could find (and it refuses it)
                        verdict = await self._rails.check(
                            text, Stage.OUTPUT, deadline, degradation, grounding
                        )
                    if blocked(verdict):
                        span.set_attribute("forge.blocked", True)
                        _set_usage(span, end)
                        yield ChatEnd(
                            prompt_tokens=end.prompt_tokens,
                            completion_tokens=end.completion_tokens,
                            verdict=verdict_for_caller(verdict, Stage.OUTPUT, offset=offset),
                            finish_reason=FinishReason.BLOCKED,
                        )
                        return  # closing the stream aborts the generation
                    release = window.release(offset, verdict, final)
                    if release:
                        yield ChatDelta(release)
            _set_usage(span, end)
            span.set_attribute("forge.finish_reason", end.finish_reason.value)
            metrics.STAGE_SECONDS.labels("generate").observe(time.monotonic() - started)
        yield end


def _set_usage(span: trace.Span, end: ChatEnd) -> None:
    span.set_attributes(
        {"forge.prompt_tokens": end.prompt_tokens, "forge.completion_tokens": end.completion_tokens}
    )
