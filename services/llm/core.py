"""The LLM service's domain core: validate a request against the model's limits, admit it within
the service's hard capacity, stream it from the engine, and abort it in the engine whenever the
caller goes away. Nothing here knows about gRPC.

Tracing: each generation is a span "llm.generate" (a child of whatever span is current: the gRPC
server span) with children that tile it, each with explicit start and end times:
"llm.prepare" (validation and tokenisation), "llm.queue" (handed to the engine -> first
scheduled, from the engine's own timestamps where it reports them: vLLM does, llama.cpp not),
"llm.prefill" (scheduled, or handed over when the queue is unknown -> first token) and
"llm.decode" (first token -> last token, or the abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.common.sampling import SamplingParams
from services.llm import metrics
from services.llm.engine import (
    EngineDead,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    LlmEngine,
    Sampling,
)
from services.llm.settings import LlmSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("forge.llm")

# What a caller is told once the engine died: this process drains and exits (EXIT_FATAL), and
# whatever supervises it starts a fresh one, which loads the model again (tens of seconds on CPU).
ENGINE_DEAD_MESSAGE = (
    "the engine died; this LLM process is exiting so that its supervisor starts a fresh one; "
    "retry on another replica now or here once it reports SERVING"
)
ENGINE_DEAD_RETRY_S = 10.0
ROLES = ("system", "user", "assistant")  # what every engine's chat template is given
QUOTE_CHARS = 16  # the most of a caller's value (a role) an error message repeats


def _quoted(value: str) -> str:
    """A caller's value for an error message, cut short: a 200,000-character role is not echoed."""
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return f"{value[:QUOTE_CHARS]!r}... ({len(value)} characters)"


class Priority(IntEnum):
    """Lower runs first in the engine's scheduler."""

    INTERACTIVE = 0
    BATCH = 1


@dataclass(frozen=True)
class GenerateInput:
    messages: Sequence[tuple[str, str]] = ()
    prompt: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class GenerateEvent:
    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None  # on the last event only


@dataclass(frozen=True)
class ModelInfo:
    model: str
    engine: str
    max_context_tokens: int
    max_concurrent_sequences: int
    running: int
    waiting: int


@dataclass
class _Active:
    count: int = 0
    by_id: set[str] = field(default_factory=set)


def _wall_ns(monotonic_s: float, now_ns: int, now_monotonic_s: float) -> int:
    """A time.monotonic() reading as epoch nanoseconds (span times), via a pair read together."""
    return now_ns - int((now_monotonic_s - monotonic_s) * 1e9)


class _Phases:
    """The child spans of one llm.generate span. Nothing is left open: `end` closes whatever phase
    the request reached, whichever way it ended."""

    def __init__(self, parent: Span) -> None:
        self.parent = parent
        self._context = trace.set_span_in_context(parent)
        self.started_ns = time.time_ns()
        self.handed_ns: int | None = None  # handed to the engine
        self._decode: Span | None = None
        self._ended = False

    def _span(self, name: str, start_ns: int, attributes: Mapping[str, AttributeValue]) -> Span:
        return tracer.start_span(name, context=self._context, start_time=start_ns, attributes=attributes)

    def handed_over(self, prompt_tokens: int) -> None:
        self.handed_ns = time.time_ns()
        prepare = self._span("llm.prepare", self.started_ns, {"forge.prompt_tokens": prompt_tokens})
        prepare.end(end_time=self.handed_ns)

    def first_token(self, chunk: GenerationChunk, prompt_tokens: int) -> None:
        assert self.handed_ns is not None
        now_ns, now_mono = time.time_ns(), time.monotonic()
        prefill_from = self.handed_ns
        if chunk.queued_at is not None and chunk.scheduled_at is not None:
            # Engine timestamps, clamped into this request's timeline (the clocks are converted).
            scheduled_ns = min(max(_wall_ns(chunk.scheduled_at, now_ns, now_mono), self.handed_ns), now_ns)
            engine_queue_s = chunk.scheduled_at - chunk.queued_at
            queue = self._span("llm.queue", self.handed_ns, {"forge.engine_queue_s": engine_queue_s})
            queue.end(end_time=scheduled_ns)
            prefill_from = scheduled_ns
        prefill = self._span("llm.prefill", prefill_from, {"forge.prompt_tokens": prompt_tokens})
        prefill.end(end_time=now_ns)
        self._decode = self._span("llm.decode", now_ns, {})

    def end(self, completion_tokens: int, finish: FinishReason | None, abort_reason: str | None) -> None:
        """Close the phase the request reached; the first call wins."""
        if self._ended:
            return
        self._ended = True
        if self.handed_ns is None:  # rejected or failed before reaching the engine
            return
        outcome: dict[str, AttributeValue] = {
            "forge.completion_tokens": completion_tokens,
            "forge.aborted": abort_reason is not None,
        }
        if finish is not None:
            outcome["forge.finish_reason"] = finish.value
        if abort_reason is not None:
            outcome["forge.abort_reason"] = abort_reason
        if self._decode is not None:
            self._decode.set_attributes(outcome)
            self._decode.end()
        else:  # stopped before the first token: a prefill cut short
            self._span("llm.prefill", self.handed_ns, outcome).end()
        self.parent.set_attributes(outcome)


class LlmCore:
    def __init__(self, settings: LlmSettings, on_engine_dead: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.engine: LlmEngine | None = None
        self._on_engine_dead = on_engine_dead
        self._active = _Active()

    @property
    def capacity(self) -> int:
        return self.settings.max_num_seqs

    @property
    def active(self) -> int:
        return self._active.count

    def attach(self, engine: LlmEngine) -> None:
        self.engine = engine
        metrics.RUNNING.set_function(lambda: engine.stats().running)
        metrics.WAITING.set_function(lambda: engine.stats().waiting)
        metrics.KV_CACHE_USAGE.set_function(lambda: engine.stats().kv_cache_usage)

    def _engine(self) -> LlmEngine:
        if self.engine is None:
            raise Unavailable("llm engine", "still loading; retry shortly", retry_after_s=5)
        if self.engine.is_dead():
            self._on_engine_dead()
            raise Unavailable("llm engine", ENGINE_DEAD_MESSAGE, retry_after_s=ENGINE_DEAD_RETRY_S)
        return self.engine

    # -- validation ---------------------------------------------------------------------------

    def _check_input_size(self, messages: Sequence[tuple[str, str]], prompt: str) -> None:
        """Generate's and Tokenize's input: counts and sizes first (they cost nothing), then each
        message; a refusal never repeats more than the start of what was sent."""
        s = self.settings
        if messages and prompt:
            raise InvalidArgument("prompt", "set either messages or prompt, not both")
        if not messages and not prompt:
            raise InvalidArgument("messages", "set messages (chat) or prompt (raw text); both are empty")
        if len(messages) > s.max_messages:
            raise InvalidArgument("messages", f"at most {s.max_messages} messages, got {len(messages)}")
        chars = len(prompt) + sum(len(c) for _, c in messages)
        if chars > s.max_input_chars:
            field_name = "prompt" if prompt else "messages"
            raise InvalidArgument(field_name, f"at most {s.max_input_chars} characters in all, got {chars}")
        for i, (role, content) in enumerate(messages):
            if role not in ROLES:
                raise InvalidArgument(
                    f"messages[{i}].role", f"must be one of {', '.join(ROLES)}; got {_quoted(role)}"
                )
            if not content.strip():
                raise InvalidArgument(f"messages[{i}].content", "must not be empty")

    def _sampling(self, inp: GenerateInput, prompt_tokens: int, context: int) -> Sampling:
        s = self.settings
        p = inp.sampling
        p.validate(s.max_stop_sequences, s.max_stop_chars)
        room = context - prompt_tokens
        if p.max_tokens is None:
            max_tokens = min(s.default_max_tokens, room)
        elif p.max_tokens > room:
            raise InvalidArgument(
                "params.max_tokens",
                f"prompt ({prompt_tokens} tokens) + max_tokens ({p.max_tokens}) exceeds the context of "
                f"{context} tokens; at most {room}",
            )
        else:
            max_tokens = p.max_tokens
        temperature = 1.0 if p.temperature is None else p.temperature
        top_p = 1.0 if p.top_p is None else p.top_p
        top_k = -1 if p.top_k is None or p.top_k in (0, -1) else p.top_k
        return Sampling(max_tokens, temperature, top_p, top_k, p.stop, p.seed)

    async def _prompt_ids(
        self, engine: LlmEngine, messages: Sequence[tuple[str, str]], prompt: str
    ) -> list[int]:
        self._check_input_size(messages, prompt)
        if messages:
            return await asyncio.to_thread(engine.tokenize_chat, messages)
        return await asyncio.to_thread(engine.tokenize_text, prompt)

    async def prepare(self, inp: GenerateInput) -> GenerationRequest:
        """Validate and tokenise; raises InvalidArgument naming the field and the limit."""
        engine = self._engine()
        if len(inp.request_id) > self.settings.max_request_id_chars:
            raise InvalidArgument("request_id", f"at most {self.settings.max_request_id_chars} characters")
        ids = await self._prompt_ids(engine, inp.messages, inp.prompt)
        context = engine.max_context_tokens
        if len(ids) >= context:
            raise InvalidArgument(
                "prompt" if inp.prompt else "messages",
                f"the prompt is {len(ids)} tokens; the model's context is {context} tokens "
                "and must leave room for at least 1 generated token",
            )
        sampling = self._sampling(inp, len(ids), context)
        # The engine's id stays unique even when callers reuse theirs.
        engine_id = f"{inp.request_id or 'req'}-{uuid.uuid4().hex[:12]}"
        return GenerationRequest(engine_id, ids, sampling, int(inp.priority))

    # -- serving ------------------------------------------------------------------------------

    def _admit(self) -> None:
        if self._active.count >= self.capacity:
            metrics.REJECTED.labels("CAPACITY").inc()
            raise ResourceExhausted(
                "LLM_CAPACITY",
                f"the LLM service is at its limit of {self.capacity} concurrent requests",
                retry_after_s=1.0,
            )

    async def generate(
        self, inp: GenerateInput, abort_reason: Callable[[], str] = lambda: "cancelled"
    ) -> AsyncIterator[GenerateEvent]:
        """Stream a generation. If the consumer stops early (cancel, deadline, error), the engine
        request is aborted and counted under `abort_reason()`."""
        span = tracer.start_span("llm.generate", attributes={"forge.priority": inp.priority.name.lower()})
        phases = _Phases(span)
        try:
            # aclosing: a consumer that stops early closes the inner generation now (abort, slot).
            async with contextlib.aclosing(self._generate(inp, abort_reason, phases)) as events:
                async for event in events:
                    yield event
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            phases.end(0, None, None)  # no-op unless the request never reached the engine
            span.end()

    async def _generate(
        self, inp: GenerateInput, abort_reason: Callable[[], str], phases: _Phases
    ) -> AsyncGenerator[GenerateEvent, None]:
        self._admit()
        request = await self.prepare(inp)
        self._admit()  # tokenising yielded the loop; re-check before taking the slot
        engine = self._engine()
        prompt_tokens = len(request.prompt_token_ids)
        phases.parent.set_attributes(
            {
                "forge.request_id": request.request_id,
                "forge.engine": engine.name,
                "forge.prompt_tokens": prompt_tokens,
                "forge.max_tokens": request.sampling.max_tokens,
            }
        )
        self._active.count += 1
        metrics.ACTIVE.inc()
        metrics.PROMPT_TOKENS.inc(prompt_tokens)
        phases.handed_over(prompt_tokens)
        started = last = time.perf_counter()
        completion_tokens = 0
        finished = False
        try:
            async for chunk in engine.generate(request):
                now = time.perf_counter()
                if completion_tokens == 0 and chunk.completion_tokens > 0:
                    metrics.TIME_TO_FIRST_TOKEN.observe(now - started)
                    phases.first_token(chunk, prompt_tokens)
                elif chunk.completion_tokens > completion_tokens:
                    metrics.INTER_TOKEN_LATENCY.observe(now - last)
                metrics.GENERATED_TOKENS.inc(chunk.completion_tokens - completion_tokens)
                completion_tokens, last = chunk.completion_tokens, now
                if chunk.finish_reason is not None:
                    finished = True
                    metrics.FINISHED.labels(chunk.finish_reason.value).inc()
                    phases.end(completion_tokens, chunk.finish_reason, None)
                    usage = Usage(prompt_tokens, completion_tokens)
                    yield GenerateEvent(chunk.text, chunk.finish_reason, usage)
                    return
                if chunk.text:
                    yield GenerateEvent(chunk.text)
        except EngineDead as exc:
            self._on_engine_dead()
            raise Unavailable(
                "llm engine", f"{ENGINE_DEAD_MESSAGE} ({exc})", retry_after_s=ENGINE_DEAD_RETRY_S
            ) from exc
        finally:
            self._active.count -= 1
            metrics.ACTIVE.dec()
            if not finished:
                reason = abort_reason()
                phases.end(completion_tokens, None, reason)
                metrics.ABORTED.labels(reason).inc()
                log.info("aborting %s (%s) after %d tokens", request.request_id, reason, completion_tokens)
                if not engine.is_dead():
                    await asyncio.shield(engine.abort(request.request_id))

    async def tokenize(self, messages: Sequence[tuple[str, str]], prompt: str) -> list[int]:
        return await self._prompt_ids(self._engine(), messages, prompt)

    def model_info(self) -> ModelInfo:
        engine = self._engine()
        stats = engine.stats()
        return ModelInfo(
            model=engine.model_name,
            engine=engine.name,
            max_context_tokens=engine.max_context_tokens,
            max_concurrent_sequences=self.capacity,
            running=stats.running,
            waiting=stats.waiting,
        )
