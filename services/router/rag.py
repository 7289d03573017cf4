"""Chat: admission, then retrieval-augmented generation through the rails. No gRPC here.

Order of one chat: admit (or reject) -> input rail and query embedding concurrently -> top-k
search filtered by tenant -> retrieval rail on each chunk -> prompt fitted to the LLM's context
budget (lowest-scored chunks dropped first) -> LLM tokens streamed through the output rail ->
a summary with citations, usage, verdict and whether the answer was degraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.router import metrics
from services.router.admission import AdmissionController, Priority
from services.router.budget import Candidate, context_budget, fit_chunks
from services.router.deadline import Deadline
from services.router.output_rail import Segmenter
from services.router.ports import (
    Decision,
    Embeddings,
    FinishReason,
    Guardrails,
    Llm,
    Message,
    RailFinding,
    RailVerdict,
    Sampling,
    Stage,
)
from services.router.prompt import ContextChunk, assemble, context_entry
from services.router.settings import RouterSettings
from services.router.store import StoredHit, StoreUnavailable, VectorStore

log = logging.getLogger(__name__)
tracer = trace.get_tracer("forge.router")

T = TypeVar("T")

COLLECTION_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatInput:
    messages: tuple[Message, ...]
    collection: str = ""
    top_k: int = 0
    sampling: Sampling = field(default_factory=Sampling)
    priority: Priority = Priority.INTERACTIVE
    disable_retrieval: bool = False


@dataclass(frozen=True)
class Citation:
    document_id: str
    chunk_index: int
    score: float


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    stage: Stage
    findings: tuple[RailFinding, ...]
    message: str


@dataclass(frozen=True)
class ChatDelta:
    text: str


@dataclass(frozen=True)
class ChatEnd:
    citations: tuple[Citation, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    degraded: bool = False
    verdict: Verdict | None = None
    finish_reason: FinishReason = FinishReason.STOP


ChatEvent = ChatDelta | ChatEnd


def validate_collection(collection: str, default: str) -> str:
    name = collection or default
    if not COLLECTION_PATTERN.match(name):
        raise InvalidArgument(
            "collection",
            f"must match {COLLECTION_PATTERN.pattern} (a letter, then up to 62 letters, digits or _)",
        )
    return name


def validate_top_k(top_k: int, default: int, maximum: int) -> int:
    if top_k > maximum:
        raise InvalidArgument("top_k", f"must be at most {maximum}, got {top_k}")
    return top_k or default


@dataclass
class _Degradation:
    reasons: list[str] = field(default_factory=list)

    def note(self, reason: str) -> None:
        log.warning("chat degraded: %s", reason)
        metrics.DEGRADED.labels(reason.split(":", 1)[0]).inc()
        self.reasons.append(reason)


class ChatOrchestrator:
    def __init__(
        self,
        settings: RouterSettings,
        admission: AdmissionController,
        store: VectorStore,
        embeddings: Embeddings,
        guardrails: Guardrails,
        llm: Llm,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.store = store
        self.embeddings = embeddings
        self.guardrails = guardrails
        self.llm = llm

    # -- validation -------------------------------------------------------------------------
    def validate(self, request: ChatInput) -> tuple[str, int]:
        s = self.settings
        if not request.messages:
            raise InvalidArgument("messages", "must hold at least one message, the last from role user")
        if len(request.messages) > s.max_messages:
            raise InvalidArgument(
                "messages", f"at most {s.max_messages} messages, got {len(request.messages)}"
            )
        for i, m in enumerate(request.messages):
            if m.role not in ROLES:
                raise InvalidArgument(
                    f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.role!r}"
                )
            if len(m.content) > s.max_message_chars:
                raise InvalidArgument(
                    f"messages[{i}].content",
                    f"must be at most {s.max_message_chars} characters, got {len(m.content)}",
                )
        last = request.messages[-1]
        if last.role != "user" or not last.content.strip():
            raise InvalidArgument(
                f"messages[{len(request.messages) - 1}]", "the last message must be a non-empty user message"
            )
        mt = request.sampling.max_tokens
        if mt is not None and mt < 1:
            raise InvalidArgument("params.max_tokens", f"must be at least 1, got {mt}")
        collection = validate_collection(request.collection, s.default_collection)
        top_k = (
            0 if request.disable_retrieval else validate_top_k(request.top_k, s.default_top_k, s.max_top_k)
        )
        return collection, top_k

    # -- the chat ---------------------------------------------------------------------------
    async def chat(self, tenant: str, request: ChatInput, deadline: Deadline) -> AsyncIterator[ChatEvent]:
        collection, top_k = self.validate(request)
        started = time.monotonic()
        outcome = "error"
        # The span of the whole request (the Chat server span under gRPC) carries the request's
        # shape and, at the end, its outcome.
        request_span = trace.get_current_span()
        request_span.set_attributes(
            {
                "forge.tenant": tenant,
                "forge.collection": collection,
                "forge.top_k": top_k,
                "forge.priority": request.priority.name.lower(),
            }
        )
        async with contextlib.AsyncExitStack() as session:
            # A refusal is an expected outcome: a reason attribute, not a formatted traceback
            # (recording it measured ~2 ms of CPU per refusal).
            with tracer.start_as_current_span(
                "router.admission", record_exception=False, set_status_on_exception=False
            ) as span:
                span.set_attribute("forge.tenant", tenant)
                span.set_attribute("forge.priority", request.priority.name.lower())
                try:
                    admitted = await session.enter_async_context(
                        self.admission.session(tenant, request.priority, deadline.remaining())
                    )
                except ResourceExhausted as refused:
                    span.set_attribute("forge.rejected", refused.reason)
                    raise
                span.set_attribute("forge.queued_s", admitted.queued_s)
            try:
                async for event in self._grounded_answer(tenant, request, collection, top_k, deadline):
                    if isinstance(event, ChatEnd):
                        outcome = "blocked" if event.verdict is not None else "completed"
                        request_span.set_attributes(_end_attributes(event))
                    yield event
            except (asyncio.CancelledError, GeneratorExit):
                outcome = "cancelled"
                raise
            finally:
                request_span.set_attribute("forge.outcome", outcome)
                metrics.CHATS.labels(outcome).inc()
                metrics.CHAT_SECONDS.labels(outcome).observe(time.monotonic() - started)

    async def _grounded_answer(
        self, tenant: str, request: ChatInput, collection: str, top_k: int, deadline: Deadline
    ) -> AsyncIterator[ChatEvent]:
        degraded = _Degradation()
        conversation = list(request.messages)
        question = conversation[-1].content

        input_check = self._rail(question, Stage.INPUT, deadline, degraded)
        query_vector = self._query_vector(question, top_k, deadline, degraded)
        verdict, vector = await asyncio.gather(input_check, query_vector)
        if verdict is not None and verdict.decision is Decision.BLOCK:
            yield ChatEnd(
                degraded=bool(degraded.reasons),
                verdict=_verdict(verdict, Stage.INPUT),
                finish_reason=FinishReason.BLOCKED,
            )
            return
        if verdict is not None and verdict.decision is Decision.REDACT:
            conversation[-1] = Message("user", verdict.text_to_use(question))

        hits = await self._search(tenant, collection, vector, top_k, deadline, degraded) if vector else []
        chunks = await self._retrieval_rail(hits, deadline, degraded)
        messages, kept = await self._fit_prompt(conversation, chunks, request.sampling, deadline)
        citations = tuple(Citation(c.document_id, c.chunk_index, c.score) for c in kept)
        trace.get_current_span().set_attributes(  # the request's span: no stage span is open here
            {
                "forge.chunks_retrieved": len(hits),
                "forge.chunks_passed_rail": len(chunks),
                "forge.chunks_kept": len(kept),
            }
        )

        async for event in self._generate(messages, request, deadline, degraded):
            if isinstance(event, ChatEnd):
                event = ChatEnd(
                    citations=citations,
                    prompt_tokens=event.prompt_tokens,
                    completion_tokens=event.completion_tokens,
                    degraded=bool(degraded.reasons),
                    verdict=event.verdict,
                    finish_reason=event.finish_reason,
                )
            yield event

    async def search(
        self, tenant: str, query: str, collection: str, top_k: int, deadline: Deadline
    ) -> list[ContextChunk]:
        """Retrieval only: the chunks a chat with this question would be grounded on. Failures of
        retrieval are errors here (there is no answer to degrade)."""
        s = self.settings
        if not query.strip():
            raise InvalidArgument("query", "must not be empty")
        if len(query) > s.max_message_chars:
            raise InvalidArgument(
                "query", f"must be at most {s.max_message_chars} characters, got {len(query)}"
            )
        collection = validate_collection(collection, s.default_collection)
        top_k = validate_top_k(top_k, s.default_top_k, s.max_top_k)
        timeout = self._stage_timeout("query embedding", deadline)
        vector = (
            await self._stage(
                "embed_query", self.embeddings.embed([query], True, timeout), {"forge.texts": 1}
            )
        )[0]
        timeout = self._stage_timeout("the Milvus search", deadline)
        try:
            hits = await self._stage(
                "search",
                self.store.search(tenant, collection, vector, top_k, timeout_s=timeout),
                _search_attributes(tenant, collection, top_k),
                lambda found: {"forge.chunks_retrieved": len(found)},
            )
        except StoreUnavailable as exc:
            raise Unavailable("milvus", str(exc)) from exc
        strict = _Degradation()
        chunks = await self._retrieval_rail(hits, deadline, strict)
        return chunks

    # -- stages -----------------------------------------------------------------------------
    async def _stage(
        self,
        name: str,
        work: Awaitable[T],
        attributes: Mapping[str, AttributeValue] | None = None,
        describe: Callable[[T], Mapping[str, AttributeValue]] | None = None,
    ) -> T:
        """Await `work` inside span "router.<name>" (with `attributes`, plus `describe(result)`)
        and time it."""
        started = time.monotonic()
        try:
            with tracer.start_as_current_span(f"router.{name}", attributes=attributes) as span:
                result = await work
                if describe is not None and span.is_recording():
                    span.set_attributes(describe(result))
                return result
        finally:
            metrics.STAGE_SECONDS.labels(name).observe(time.monotonic() - started)

    def _stage_timeout(self, stage: str, deadline: Deadline) -> float:
        s = self.settings
        return deadline.stage_timeout(stage, s.pre_generation_deadline_share, s.stage_timeout_cap_s)

    async def _rail(
        self, text: str, stage: Stage, deadline: Deadline, degraded: _Degradation
    ) -> RailVerdict | None:
        if not self.settings.guardrails_enabled:
            return None
        timeout = self._stage_timeout(f"the {stage.value} rail", deadline)
        try:
            verdict = await self._stage(
                f"rail_{stage.value}",
                self.guardrails.check(text, stage, timeout),
                {"forge.text_chars": len(text)},
                lambda v: _rail_attributes(stage, v),
            )
        except Unavailable as exc:
            if self.settings.on_guardrails_failure == "fail":
                raise
            degraded.note(f"guardrails: {exc}")
            return None
        return verdict

    async def _query_vector(
        self, question: str, top_k: int, deadline: Deadline, degraded: _Degradation
    ) -> list[float] | None:
        if top_k == 0:
            return None
        timeout = self._stage_timeout("query embedding", deadline)
        try:
            vectors = await self._stage(
                "embed_query", self.embeddings.embed([question], True, timeout), {"forge.texts": 1}
            )
        except Unavailable as exc:
            if self.settings.on_retrieval_failure == "fail":
                raise
            degraded.note(f"embed: {exc}")
            return None
        return vectors[0]

    async def _search(
        self,
        tenant: str,
        collection: str,
        vector: list[float],
        top_k: int,
        deadline: Deadline,
        degraded: _Degradation,
    ) -> list[StoredHit]:
        timeout = self._stage_timeout("the Milvus search", deadline)
        try:
            return await self._stage(
                "search",
                self.store.search(tenant, collection, vector, top_k, timeout_s=timeout),
                _search_attributes(tenant, collection, top_k),
                lambda found: {"forge.chunks_retrieved": len(found)},
            )
        except StoreUnavailable as exc:
            if self.settings.on_retrieval_failure == "fail":
                raise Unavailable("milvus", str(exc)) from exc
            degraded.note(f"milvus: {exc}")
            return []

    async def _retrieval_rail(
        self, hits: Sequence[StoredHit], deadline: Deadline, degraded: _Degradation
    ) -> list[ContextChunk]:
        """Chunks that pass the retrieval rail (indirect prompt injection), redacted where it says so."""
        if not hits:
            return []
        verdicts = await asyncio.gather(
            *(self._rail(h.text, Stage.RETRIEVAL, deadline, degraded) for h in hits)
        )
        chunks: list[ContextChunk] = []
        for hit, verdict in zip(hits, verdicts, strict=True):
            if verdict is not None and verdict.decision is Decision.BLOCK:
                metrics.CHUNKS_BLOCKED.inc()
                continue
            text = verdict.text_to_use(hit.text) if verdict is not None else hit.text
            chunks.append(ContextChunk(hit.document_id, hit.chunk_index, hit.score, text, hit.metadata))
        return chunks

    async def _fit_prompt(
        self,
        conversation: list[Message],
        chunks: list[ContextChunk],
        sampling: Sampling,
        deadline: Deadline,
    ) -> tuple[list[Message], list[ContextChunk]]:
        """The prompt within the LLM's context: one token count when everything fits; otherwise
        each chunk is counted and the lowest-scored ones are dropped first."""
        s = self.settings
        timeout = self._stage_timeout("counting prompt tokens", deadline)

        async def fit() -> tuple[list[Message], list[ContextChunk]]:
            max_context = await self.llm.max_context_tokens(timeout)
            max_new = sampling.max_tokens or s.default_max_tokens
            try:
                budget = context_budget(max_context, max_new)
            except ValueError as exc:
                raise InvalidArgument(
                    "params.max_tokens", f"must leave room for the prompt in the model's {max_context} tokens"
                ) from exc
            span = trace.get_current_span()  # router.prompt
            span.set_attributes({"forge.context_tokens": max_context, "forge.prompt_budget_tokens": budget})
            full = assemble(s.system_prompt, conversation, chunks)
            total = await self.llm.count_tokens(full, timeout)
            if total <= budget or not chunks:
                span.set_attribute("forge.prompt_tokens", total)
                _check_fits(total, budget, max_context, max_new)
                return full, chunks
            base, *sizes = await asyncio.gather(
                self.llm.count_tokens(assemble(s.system_prompt, conversation, []), timeout),
                *(self.llm.count_text_tokens(context_entry(n, c), timeout) for n, c in enumerate(chunks, 1)),
            )
            plan = fit_chunks(
                base, [Candidate(c, c.score, size) for c, size in zip(chunks, sizes, strict=True)], budget
            )
            span.set_attribute("forge.prompt_tokens", plan.prompt_tokens)
            _check_fits(base, budget, max_context, max_new)
            kept = [c.key for c in plan.kept if isinstance(c.key, ContextChunk)]
            metrics.CHUNKS_DROPPED.inc(len(plan.dropped))
            return assemble(s.system_prompt, conversation, kept), kept

        return await self._stage(
            "prompt",
            fit(),
            {"forge.chunks_offered": len(chunks)},
            lambda fitted: {"forge.chunks_kept": len(fitted[1])},
        )

    async def _generate(
        self, messages: list[Message], request: ChatInput, deadline: Deadline, degraded: _Degradation
    ) -> AsyncIterator[ChatEvent]:
        s = self.settings
        sampling = request.sampling
        if sampling.max_tokens is None:
            sampling = Sampling(
                s.default_max_tokens,
                sampling.temperature,
                sampling.top_p,
                sampling.top_k,
                sampling.stop,
                sampling.seed,
            )
        segmenter = Segmenter(s.output_segment_chars)
        released = 0  # characters of the answer already sent, for finding offsets
        prompt_tokens = completion_tokens = 0
        finish = FinishReason.STOP
        timeout = deadline.rest("generation", s.generation_timeout_s)
        stream = self.llm.generate(messages, sampling, request.priority, uuid.uuid4().hex, timeout)
        with tracer.start_as_current_span(
            "router.generate", attributes={"forge.max_tokens": sampling.max_tokens or 0}
        ) as span:
            started = time.monotonic()
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    if piece.finish_reason is not None:
                        finish = piece.finish_reason
                        prompt_tokens, completion_tokens = piece.prompt_tokens, piece.completion_tokens
                    segments = segmenter.feed(piece.text)
                    if piece.finish_reason is not None:
                        segments.append(segmenter.flush())
                    for segment in segments:
                        if not segment:
                            continue
                        verdict = await self._rail(segment, Stage.OUTPUT, deadline, degraded)
                        if verdict is not None and verdict.decision is Decision.BLOCK:
                            span.set_attributes(
                                {
                                    "forge.blocked": True,
                                    "forge.prompt_tokens": prompt_tokens,
                                    "forge.completion_tokens": completion_tokens,
                                }
                            )
                            yield ChatEnd(
                                prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens,
                                verdict=_verdict(verdict, Stage.OUTPUT, offset=released),
                                finish_reason=FinishReason.BLOCKED,
                            )
                            return  # closing the stream aborts the generation
                        text = verdict.text_to_use(segment) if verdict is not None else segment
                        released += len(segment)
                        yield ChatDelta(text)
            span.set_attributes(
                {
                    "forge.prompt_tokens": prompt_tokens,
                    "forge.completion_tokens": completion_tokens,
                    "forge.finish_reason": finish.value,
                }
            )
            metrics.STAGE_SECONDS.labels("generate").observe(time.monotonic() - started)
        yield ChatEnd(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, finish_reason=finish)


def _search_attributes(tenant: str, collection: str, top_k: int) -> dict[str, AttributeValue]:
    return {"forge.tenant": tenant, "forge.collection": collection, "forge.top_k": top_k}


def _rail_attributes(stage: Stage, verdict: RailVerdict) -> dict[str, AttributeValue]:
    return {
        f"forge.rail.{stage.value}": verdict.decision.value,
        "forge.rail.findings": len(verdict.findings),
        "forge.rail.categories": sorted({f.category for f in verdict.findings}),
    }


def _end_attributes(end: ChatEnd) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "forge.chunks_cited": len(end.citations),
        "forge.prompt_tokens": end.prompt_tokens,
        "forge.completion_tokens": end.completion_tokens,
        "forge.finish_reason": end.finish_reason.value,
        "forge.degraded": end.degraded,
    }
    if end.verdict is not None:
        attributes[f"forge.rail.{end.verdict.stage.value}"] = end.verdict.decision.value
    return attributes


def _check_fits(prompt_tokens: int, budget: int, max_context: int, max_new: int) -> None:
    if prompt_tokens > budget:
        raise InvalidArgument(
            "messages",
            f"the conversation takes {prompt_tokens} tokens; with max_tokens {max_new} the model's "
            f"context of {max_context} tokens leaves {budget} for the prompt",
        )


_STAGE_NAMES = {Stage.INPUT: "input", Stage.RETRIEVAL: "retrieval", Stage.OUTPUT: "output"}


def _verdict(verdict: RailVerdict, stage: Stage, offset: int = 0) -> Verdict:
    rails = sorted({f.rail for f in verdict.findings}) or ["policy"]
    findings = tuple(
        RailFinding(f.rail, f.category, f.score, f.start + offset, f.end + offset) for f in verdict.findings
    )
    subject = "request" if stage is Stage.INPUT else "answer"
    return Verdict(
        decision=verdict.decision,
        stage=stage,
        findings=findings,
        message=f"The {subject} was blocked by the {_STAGE_NAMES[stage]} guardrail ({', '.join(rails)}).",
    )
