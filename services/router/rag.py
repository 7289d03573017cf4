"""Chat: admission, then retrieval-augmented generation through the rails. No gRPC here.

Order of one chat: admit (or reject) -> input rail and query embedding concurrently -> top-k
search filtered by tenant -> retrieval rail on each chunk -> prompt fitted to the LLM's context
budget (lowest-scored chunks dropped first) -> LLM tokens streamed through the output rail ->
a summary with citations, usage, verdict and whether the answer was degraded.
The stages themselves are collaborators: `Retriever`, `GuardedAnswer`, `Rails`, `StageRunner`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from services.common.errors import InvalidArgument, ResourceExhausted
from services.router import metrics, validation
from services.router.admission import AdmissionController
from services.router.budget import Candidate, context_budget, fit_chunks
from services.router.deadline import Deadline
from services.router.grounding import grounding_for
from services.router.guarded_answer import GuardedAnswer
from services.router.ports import (
    ChatEnd,
    ChatEvent,
    ChatInput,
    Citation,
    ContextChunk,
    FinishReason,
    Llm,
    Message,
    RailVerdict,
    Stage,
)
from services.router.prompt import (
    assemble,
    cited_numbers,
    context_entry,
    source_holding_figures,
    style_for,
)
from services.router.retrieval import Retriever
from services.router.settings import RouterSettings
from services.router.stages import Degradation, Rails, StageRunner, blocked, verdict_for_caller

tracer = trace.get_tracer("forge.router")

# The roles the LLM service's chat template takes (services/llm/core.py ROLES). Anything else is
# refused, and only the start of it is quoted back: a role is a short word, not a place for text.
ROLES = ("system", "user", "assistant")
ROLE_QUOTE_CHARS = 16


class ChatOrchestrator:
    def __init__(
        self,
        settings: RouterSettings,
        admission: AdmissionController,
        stages: StageRunner,
        rails: Rails,
        retriever: Retriever,
        llm: Llm,
    ) -> None:
        self.settings = settings
        self._admission = admission
        self._stages = stages
        self._rails = rails
        self._retriever = retriever
        self._llm = llm
        self._answer = GuardedAnswer(settings, llm, rails)

    def validate(self, request: ChatInput) -> ChatInput:
        """The request with defaults filled in, or INVALID_ARGUMENT naming the field and limit."""
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
                    f"messages[{i}].role",
                    f"must be one of {', '.join(ROLES)}, got {validation.quoted(m.role, ROLE_QUOTE_CHARS)}",
                )
            validation.text(m.content, f"messages[{i}].content", s.max_message_chars)
        chars = sum(len(m.content) for m in request.messages)
        if chars > s.max_conversation_chars:
            raise InvalidArgument(
                "messages", f"at most {s.max_conversation_chars} characters in all, got {chars}"
            )
        if request.messages[-1].role != "user":
            raise InvalidArgument(
                f"messages[{len(request.messages) - 1}].role", "the last message must be user"
            )
        request.sampling.validate()
        return replace(
            request,
            collection=validation.collection(request.collection, s.default_collection),
            top_k=0
            if request.disable_retrieval
            else validation.top_k(request.top_k, s.default_top_k, s.max_top_k),
            sampling=replace(
                request.sampling,
                max_tokens=request.sampling.max_tokens or s.default_max_tokens,
                temperature=(
                    s.default_temperature
                    if request.sampling.temperature is None
                    else request.sampling.temperature
                ),
            ),
        )

    async def chat(
        self, tenant: str, request: ChatInput, deadline: Deadline
    ) -> AsyncGenerator[ChatEvent, None]:
        request = self.validate(request)
        started = time.monotonic()
        outcome = "error"
        # The span of the whole request (the Chat server span under gRPC) carries the request's
        # shape and, at the end, its outcome.
        request_span = trace.get_current_span()
        request_span.set_attributes(
            {
                "forge.tenant": tenant,
                "forge.collection": request.collection,
                "forge.top_k": request.top_k,
                "forge.priority": request.priority.name.lower(),
            }
        )
        async with contextlib.AsyncExitStack() as session:
            await self._admit(session, tenant, request, deadline)
            # Closed here, in this task, however the chat ends: the generation is aborted now,
            # not when the garbage collector finalizes an abandoned generator.
            answer = self._grounded_answer(tenant, request, deadline)
            try:
                async with contextlib.aclosing(answer):
                    async for event in answer:
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

    async def _admit(
        self, session: contextlib.AsyncExitStack, tenant: str, request: ChatInput, deadline: Deadline
    ) -> None:
        # A refusal is an expected outcome: a reason attribute, not a formatted traceback
        # (recording it measured ~2 ms of CPU per refusal).
        with tracer.start_as_current_span(
            "router.admission", record_exception=False, set_status_on_exception=False
        ) as span:
            span.set_attribute("forge.tenant", tenant)
            span.set_attribute("forge.priority", request.priority.name.lower())
            try:
                admitted = await session.enter_async_context(
                    self._admission.session(tenant, request.priority, deadline.remaining())
                )
            except ResourceExhausted as refused:
                span.set_attribute("forge.rejected", refused.reason)
                raise
            span.set_attribute("forge.queued_s", admitted.queued_s)

    async def _grounded_answer(
        self, tenant: str, request: ChatInput, deadline: Deadline
    ) -> AsyncGenerator[ChatEvent, None]:
        degradation = Degradation()
        on_failure = self.settings.on_retrieval_failure
        conversation = list(request.messages)
        question = conversation[-1].content

        async def query_vector() -> list[float] | None:
            if request.top_k == 0:
                return None
            return await self._retriever.query_vector(question, deadline, degradation, on_failure)

        verdicts, vector = await asyncio.gather(
            self._check_turns(conversation, deadline, degradation), query_vector()
        )
        for turn, verdict in enumerate(verdicts):
            if blocked(verdict):
                yield ChatEnd(
                    degraded=bool(degradation),
                    degraded_reasons=degradation.reasons,
                    verdict=verdict_for_caller(verdict, Stage.INPUT, turn=turn),
                    finish_reason=FinishReason.BLOCKED,
                )
                return
        conversation = [
            Message(m.role, v.text_to_use(m.content)) if v is not None else m
            for m, v in zip(conversation, verdicts, strict=True)
        ]

        hits = (
            await self._retriever.search(
                tenant, request.collection, vector, request.top_k, deadline, degradation, on_failure
            )
            if vector
            else []
        )
        chunks = await self._retriever.checked(hits, deadline, degradation)
        max_new = request.sampling.max_tokens or self.settings.default_max_tokens  # validate() set it
        prompt = await self._fit_prompt(conversation, chunks, max_new, request.top_k > 0, deadline)
        kept = prompt.sources
        trace.get_current_span().set_attributes(  # the request's span: no stage span is open here
            {
                "forge.chunks_retrieved": len(hits),
                "forge.chunks_passed_rail": len(chunks),
                "forge.chunks_kept": len(kept),
            }
        )
        grounding = grounding_for(request.messages, kept)
        stream = self._answer.stream(
            prompt.messages, request.sampling, request.priority, deadline, degradation, grounding
        )
        released: list[str] = []  # what the caller got, read for its [n] markers at the end
        async with contextlib.aclosing(stream):
            async for event in stream:
                if isinstance(event, ChatEnd):
                    event = replace(
                        event,
                        citations=_citations(kept, "".join(released), question),
                        degraded=bool(degradation),
                        degraded_reasons=degradation.reasons,
                        model=prompt.model,
                    )
                else:
                    released.append(event.text)
                yield event

    async def _check_turns(
        self, conversation: Sequence[Message], deadline: Deadline, degradation: Degradation
    ) -> list[RailVerdict | None]:
        """Every message the caller sent goes through the input rail, not only the last: an
        injection in an earlier user, system or assistant turn reaches the model just the same."""
        # A few at a time: a long conversation all at once would fill the rails' bounded queues
        # by itself and be refused on an idle service.
        in_flight = asyncio.Semaphore(self.settings.input_rail_concurrency)

        async def check(message: Message) -> RailVerdict | None:
            if not message.content.strip():  # nothing a rail could find (and it refuses it)
                return None
            async with in_flight:
                return await self._rails.check(message.content, Stage.INPUT, deadline, degradation)

        return list(await asyncio.gather(*(check(m) for m in conversation)))

    async def _fit_prompt(
        self,
        conversation: list[Message],
        chunks: list[ContextChunk],
        max_new: int,
        grounded: bool,
        deadline: Deadline,
    ) -> FittedPrompt:
        """The prompt within the LLM's context, leaving room for `max_new` tokens: one token count
        when everything fits; otherwise each chunk is counted and the lowest-scored ones are
        dropped first. Its shape follows the served model's family (`PromptStyle`)."""
        s = self.settings
        timeout = self._stages.timeout("counting prompt tokens", deadline)

        async def fit() -> FittedPrompt:
            info = await self._llm.model_info(timeout)
            max_context = info.max_context_tokens
            style = style_for(info.name, s.prompt_style)
            instruction = (s.system_prompt or style.instruction) if grounded else s.plain_system_prompt

            def build(sources: Sequence[ContextChunk]) -> list[Message]:
                return assemble(instruction, conversation, sources, style, grounded)

            try:
                budget = context_budget(max_context, max_new)
            except ValueError as exc:
                raise InvalidArgument(
                    "params.max_tokens", f"must leave room for the prompt in the model's {max_context} tokens"
                ) from exc
            span = trace.get_current_span()  # router.prompt
            span.set_attributes(
                {
                    "forge.context_tokens": max_context,
                    "forge.prompt_budget_tokens": budget,
                    "forge.model": info.name,
                    "forge.prompt_style": style.family,
                }
            )
            full = build(chunks)
            total = await self._llm.count_tokens(full, timeout)
            if total <= budget or not chunks:
                span.set_attribute("forge.prompt_tokens", total)
                _check_fits(total, budget, max_context, max_new)
                return FittedPrompt(full, chunks, info.name)
            base, *sizes = await asyncio.gather(
                self._llm.count_tokens(build([]), timeout),
                *(self._llm.count_text_tokens(context_entry(n, c), timeout) for n, c in enumerate(chunks, 1)),
            )
            plan = fit_chunks(
                base, [Candidate(c, c.score, n) for c, n in zip(chunks, sizes, strict=True)], budget
            )
            span.set_attribute("forge.prompt_tokens", plan.prompt_tokens)
            _check_fits(base, budget, max_context, max_new)
            kept = [c.key for c in plan.kept]
            metrics.CHUNKS_DROPPED.inc(len(plan.dropped))
            return FittedPrompt(build(kept), kept, info.name)

        return await self._stages.run(
            "prompt",
            fit(),
            {"forge.chunks_offered": len(chunks)},
            lambda fitted: {"forge.chunks_kept": len(fitted.sources)},
        )


@dataclass(frozen=True)
class FittedPrompt:
    messages: list[Message]
    sources: list[ContextChunk]  # numbered [1], [2], ... in this order
    model: str  # the served model's name, for the summary


def _citations(sources: Sequence[ContextChunk], answer: str, question: str) -> tuple[Citation, ...]:
    """Every source the prompt held, by its number, marked cited when the answer refers to it;
    when the answer refers to none, marked matched where it holds the answer's figures."""
    cited = cited_numbers(answer, len(sources))
    matched = None if cited else source_holding_figures(answer, question, [c.text for c in sources])
    return tuple(
        Citation(c.document_id, c.chunk_index, c.score, number=n, cited=n in cited, matched=n == matched)
        for n, c in enumerate(sources, start=1)
    )


def _end_attributes(end: ChatEnd) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "forge.chunks_cited": len(end.citations),
        "forge.sources_cited": sum(c.cited for c in end.citations),
        "forge.sources_matched": sum(c.matched for c in end.citations),
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
