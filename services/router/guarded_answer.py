"""The answer as it streams from the LLM through the output rail: the text is cut into segments
(sentences, lines), each checked before it is released, redacted where the rail says so; a block
ends the answer and closing the stream aborts the generation. No gRPC here."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from opentelemetry import trace

from services.router import metrics
from services.router.deadline import Deadline
from services.router.output_rail import Segmenter
from services.router.ports import (
    ChatDelta,
    ChatEnd,
    ChatEvent,
    FinishReason,
    GenerateRequest,
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
    ) -> AsyncIterator[ChatEvent]:
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
        released = 0  # characters of the answer already sent, for finding offsets
        end = ChatEnd()
        with tracer.start_as_current_span(
            "router.generate", attributes={"forge.max_tokens": sampling.max_tokens or 0}
        ) as span:
            started = time.monotonic()
            stream = self._llm.generate(request)
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    segments = segmenter.feed(piece.text)
                    if piece.finish_reason is not None:
                        end = ChatEnd(
                            prompt_tokens=piece.prompt_tokens,
                            completion_tokens=piece.completion_tokens,
                            finish_reason=piece.finish_reason,
                        )
                        segments.append(segmenter.flush())
                    for segment in segments:
                        if not segment.strip():
                            # Only whitespace (the end of an answer): nothing a rail could find.
                            released += len(segment)
                            if segment:
                                yield ChatDelta(segment)
                            continue
                        verdict = await self._rails.check(segment, Stage.OUTPUT, deadline, degradation)
                        if blocked(verdict):
                            span.set_attribute("forge.blocked", True)
                            _set_usage(span, end)
                            yield ChatEnd(
                                prompt_tokens=end.prompt_tokens,
                                completion_tokens=end.completion_tokens,
                                verdict=verdict_for_caller(verdict, Stage.OUTPUT, offset=released),
                                finish_reason=FinishReason.BLOCKED,
                            )
                            return  # closing the stream aborts the generation
                        released += len(segment)
                        yield ChatDelta(verdict.text_to_use(segment) if verdict is not None else segment)
            _set_usage(span, end)
            span.set_attribute("forge.finish_reason", end.finish_reason.value)
            metrics.STAGE_SECONDS.labels("generate").observe(time.monotonic() - started)
        yield end


def _set_usage(span: trace.Span, end: ChatEnd) -> None:
    span.set_attributes(
        {"forge.prompt_tokens": end.prompt_tokens, "forge.completion_tokens": end.completion_tokens}
    )
