"""The LLM service's domain core: validate a request against the model's limits, admit it within
the service's hard capacity, stream it from the engine, and abort it in the engine whenever the
caller goes away. Nothing here knows about gRPC.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.llm import metrics
from services.llm.engine import EngineDead, FinishReason, GenerationRequest, LlmEngine, Sampling
from services.llm.settings import LlmSettings

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0


class Priority(IntEnum):
    """Lower runs first in the engine's scheduler."""

    INTERACTIVE = 0
    BATCH = 1


@dataclass(frozen=True)
class GenerateInput:
    messages: Sequence[tuple[str, str]] = ()
    prompt: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
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
            raise Unavailable(
                "llm engine", "the engine process died; the service is restarting", retry_after_s=5
            )
        return self.engine

    # -- validation ---------------------------------------------------------------------------

    def _check_input_size(self, messages: Sequence[tuple[str, str]], prompt: str) -> None:
        s = self.settings
        if messages and prompt:
            raise InvalidArgument("prompt", "set either messages or prompt, not both")
        if not messages and not prompt:
            raise InvalidArgument("messages", "set messages (chat) or prompt (raw text); both are empty")
        if len(messages) > s.max_messages:
            raise InvalidArgument("messages", f"at most {s.max_messages} messages, got {len(messages)}")
        for i, (role, content) in enumerate(messages):
            if role not in ROLES:
                raise InvalidArgument(
                    f"messages[{i}].role", f"must be one of {', '.join(ROLES)}; got {role!r}"
                )
            if not content.strip():
                raise InvalidArgument(f"messages[{i}].content", "must not be empty")
        chars = len(prompt) + sum(len(c) for _, c in messages)
        if chars > s.max_input_chars:
            field_name = "prompt" if prompt else "messages"
            raise InvalidArgument(field_name, f"at most {s.max_input_chars} characters in all, got {chars}")

    def _sampling(self, inp: GenerateInput, prompt_tokens: int, context: int) -> Sampling:
        s = self.settings
        room = context - prompt_tokens
        if inp.max_tokens is None:
            max_tokens = min(s.default_max_tokens, room)
        elif inp.max_tokens <= 0:
            raise InvalidArgument("params.max_tokens", f"must be > 0, got {inp.max_tokens}")
        elif inp.max_tokens > room:
            raise InvalidArgument(
                "params.max_tokens",
                f"prompt ({prompt_tokens} tokens) + max_tokens ({inp.max_tokens}) exceeds the context of "
                f"{context} tokens; at most {room}",
            )
        else:
            max_tokens = inp.max_tokens
        temperature = 1.0 if inp.temperature is None else inp.temperature
        if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
            raise InvalidArgument(
                "params.temperature", f"must be in [0, {MAX_TEMPERATURE:g}], got {temperature}"
            )
        top_p = 1.0 if inp.top_p is None else inp.top_p
        if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
            raise InvalidArgument("params.top_p", f"must be in (0, 1], got {top_p}")
        top_k = -1 if inp.top_k is None or inp.top_k in (0, -1) else inp.top_k
        if top_k < -1:
            raise InvalidArgument("params.top_k", f"must be >= 1, or -1/0 to disable, got {top_k}")
        if len(inp.stop) > s.max_stop_sequences:
            raise InvalidArgument(
                "params.stop", f"at most {s.max_stop_sequences} stop strings, got {len(inp.stop)}"
            )
        for i, stop in enumerate(inp.stop):
            if not stop or len(stop) > s.max_stop_chars:
                raise InvalidArgument(
                    f"params.stop[{i}]", f"must be 1 to {s.max_stop_chars} characters, got {len(stop)}"
                )
        return Sampling(max_tokens, temperature, top_p, top_k, tuple(inp.stop), inp.seed)

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
        self._admit()
        request = await self.prepare(inp)
        self._admit()  # tokenising yielded the loop; re-check before taking the slot
        engine = self._engine()
        self._active.count += 1
        metrics.ACTIVE.inc()
        metrics.PROMPT_TOKENS.inc(len(request.prompt_token_ids))
        started = last = time.perf_counter()
        completion_tokens = 0
        finished = False
        try:
            async for chunk in engine.generate(request):
                now = time.perf_counter()
                if completion_tokens == 0 and chunk.completion_tokens > 0:
                    metrics.TIME_TO_FIRST_TOKEN.observe(now - started)
                elif chunk.completion_tokens > completion_tokens:
                    metrics.INTER_TOKEN_LATENCY.observe(now - last)
                metrics.GENERATED_TOKENS.inc(chunk.completion_tokens - completion_tokens)
                completion_tokens, last = chunk.completion_tokens, now
                if chunk.finish_reason is not None:
                    finished = True
                    metrics.FINISHED.labels(chunk.finish_reason.value).inc()
                    usage = Usage(len(request.prompt_token_ids), completion_tokens)
                    yield GenerateEvent(chunk.text, chunk.finish_reason, usage)
                    return
                if chunk.text:
                    yield GenerateEvent(chunk.text)
        except EngineDead as exc:
            self._on_engine_dead()
            raise Unavailable("llm engine", f"the engine died: {exc}", retry_after_s=5) from exc
        finally:
            self._active.count -= 1
            metrics.ACTIVE.dec()
            if not finished:
                reason = abort_reason()
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
