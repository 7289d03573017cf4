"""The embeddings service's domain core: validate a request, batch it, shape the result.

Nothing here knows about gRPC; the servicer only converts messages.

Tracing: a request is a span "embed.embed" (texts, kind) with two children that tile the batcher's
part of it, with explicit times: "embed.batch_wait" (queued -> its batch's model call starts) and
"embed.model" (that model call, shared with the other requests of the batch: its size in texts and
requests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry import trace

from services.common.encoder import EmbedKind, SentenceEncoder, Vectors, l2_normalize
from services.common.errors import InvalidArgument, Unavailable
from services.embed import metrics
from services.embed.batcher import BatchTiming, MicroBatcher
from services.embed.fatal import model_died
from services.embed.settings import EmbedSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("forge.embed")

# What a caller is told once the model died: this process drains and exits (EXIT_FATAL), and its
# supervisor starts a fresh one, which loads the model again.
MODEL_DEAD_MESSAGE = (
    "the model died ({}); this embed process is exiting so that its supervisor starts a fresh one; "
    "retry once it reports SERVING"
)
MODEL_DEAD_RETRY_S = 5.0


@dataclass(frozen=True)
class EmbedResult:
    vectors: Vectors
    dimension: int
    model: str


def validate_texts(texts: list[str], max_texts: int, max_chars: int) -> None:
    if not texts:
        raise InvalidArgument("texts", f"must hold 1 to {max_texts} texts, got none")
    if len(texts) > max_texts:
        raise InvalidArgument("texts", f"must hold at most {max_texts} texts, got {len(texts)}")
    for i, text in enumerate(texts):  # the length first: it costs nothing, strip() copies
        if len(text) > max_chars:
            raise InvalidArgument(f"texts[{i}]", f"must be at most {max_chars} characters, got {len(text)}")
        if not text.strip():
            raise InvalidArgument(f"texts[{i}]", "must not be empty or only whitespace")


class Embedder:
    def __init__(
        self, settings: EmbedSettings, on_model_died: Callable[[str], None] = lambda reason: None
    ) -> None:
        self.settings = settings
        self.encoder: SentenceEncoder | None = None
        self._batcher: MicroBatcher[EmbedKind] | None = None
        # Called once the model cannot serve again in this process (services/embed/fatal.py).
        self.on_model_died = on_model_died
        self.death: str | None = None

    def attach(self, encoder: SentenceEncoder) -> None:
        """Start serving with a loaded model."""
        self.encoder = encoder
        self._batcher = MicroBatcher(
            run_batch=encoder.encode,
            max_batch_size=self.settings.max_batch_size,
            max_wait_s=self.settings.max_wait_ms / 1000,
            max_queued_texts=self.settings.max_queued_texts,
        )
        self._batcher.start()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    async def embed(self, texts: list[str], kind: EmbedKind, normalize: bool) -> EmbedResult:
        with tracer.start_as_current_span(
            "embed.embed", attributes={"forge.texts": len(texts), "forge.kind": kind.value}
        ):
            return await self._embed(texts, kind, normalize)

    async def _embed(self, texts: list[str], kind: EmbedKind, normalize: bool) -> EmbedResult:
        validate_texts(texts, self.settings.max_texts_per_request, self.settings.max_chars_per_text)
        if self.death is not None:
            raise Unavailable("embed model", MODEL_DEAD_MESSAGE.format(self.death), MODEL_DEAD_RETRY_S)
        if self.encoder is None or self._batcher is None:
            raise Unavailable("embed model", "still loading; retry shortly")
        timing = BatchTiming()
        try:
            vectors = await self._batcher.submit(kind, texts, timing)
        except Exception as exc:
            if not model_died(exc):
                raise
            self._died(f"{type(exc).__name__}: {exc}")
            assert self.death is not None
            raise Unavailable(
                "embed model", MODEL_DEAD_MESSAGE.format(self.death), MODEL_DEAD_RETRY_S
            ) from exc
        _record_batch(timing)
        metrics.TEXTS.labels(kind.value).inc(len(texts))
        if normalize:
            vectors = l2_normalize(vectors)
        return EmbedResult(vectors=vectors, dimension=self.encoder.dimension, model=self.encoder.name)

    def _died(self, reason: str) -> None:
        if self.death is None:
            first_line = reason.splitlines()[0] if reason else "unknown error"
            self.death = first_line[:200]
            log.error("embed model died: %s", reason)
            self.on_model_died(f"the embed model died: {self.death}")


def _record_batch(timing: BatchTiming) -> None:
    """The batcher's part of the current request as two child spans with the batcher's times."""
    if not timing.started_ns:
        return
    wait = tracer.start_span("embed.batch_wait", start_time=timing.enqueued_ns)
    wait.end(end_time=max(timing.started_ns, timing.enqueued_ns))
    model = tracer.start_span(
        "embed.model",
        start_time=timing.started_ns,
        attributes={"forge.batch_texts": timing.batch_texts, "forge.batch_requests": timing.batch_requests},
    )
    model.end(end_time=timing.finished_ns)
