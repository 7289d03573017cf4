"""gRPC adapter of the router's public API: metadata and messages in, use cases, messages out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from forge.v1 import common_pb2, router_pb2, router_pb2_grpc
from grpc import aio
from opentelemetry import trace

from services.common.codec import finding_to_pb, sampling_from_pb
from services.common.errors import DeadlineExceeded, InvalidArgument
from services.common.security.access import CURRENT_CALLER, TENANT_HEADER
from services.router import metrics, validation
from services.router.deadline import Deadline, paced
from services.router.documents import Documents
from services.router.ingest import DocumentInput, Ingestor
from services.router.ports import ChatDelta, ChatEnd, ChatInput, Message, Priority
from services.router.rag import ChatOrchestrator
from services.router.search import Searcher
from services.router.wire import DECISION_TO_PB, FINISH_TO_PB, PRIORITY_FROM_PB, STAGE_TO_PB

TRACE_ID_HEADER = "x-forge-trace-id"
DEFAULT_TENANT = "default"


Context = aio.ServicerContext[object, object]


def tenant_of(context: Context) -> str:
    """The caller's tenant: the one the auth layer settled from its API key, or (API keys off)
    the x-forge-tenant header; a single-tenant appliance may leave it out."""
    caller = CURRENT_CALLER.get()
    if caller is not None:
        return validation.tenant(caller.tenant, f"metadata {TENANT_HEADER}")
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_HEADER:
            tenant = value if isinstance(value, str) else value.decode()
            return validation.tenant(tenant, f"metadata {TENANT_HEADER}")
    return DEFAULT_TENANT


def deadline_of(context: Context) -> Deadline:
    return Deadline(context.time_remaining())


async def send(context: Context, message: object, timeout_s: float) -> None:
    """One message of a streamed answer, taken by the transport within `timeout_s`. A client that
    stops reading fills its flow-control window and the write waits: the call is ended instead,
    so it holds no session or stream slot (the caller's generator is closed by its owner)."""
    timer = asyncio.timeout(timeout_s)
    try:
        async with timer:
            await context.write(message)
    except TimeoutError:
        if not timer.expired():
            raise
        metrics.STREAMS_ENDED.labels("write_stall").inc()
        raise DeadlineExceeded(
            f"the client read nothing for {timeout_s:g}s; the call was ended and its slot freed"
        ) from None


def _ingest_idle(idle_s: float) -> DeadlineExceeded:
    metrics.STREAMS_ENDED.labels("ingest_idle").inc()
    return DeadlineExceeded(
        f"Ingest stream: the client sent nothing for {idle_s:g}s; the stream was ended and its "
        "slot freed (send documents without long pauses, or open a new stream for the rest)"
    )


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def _priority(value: common_pb2.Priority.ValueType) -> Priority:
    priority = PRIORITY_FROM_PB.get(value)
    if priority is None:
        raise InvalidArgument("priority", f"must be PRIORITY_INTERACTIVE or PRIORITY_BATCH, got {value}")
    return priority


def _summary(end: ChatEnd, trace_id: str) -> router_pb2.ChatSummary:
    summary = router_pb2.ChatSummary(
        citations=[
            router_pb2.Citation(
                document_id=c.document_id,
                chunk_index=c.chunk_index,
                score=c.score,
                number=c.number,
                cited=c.cited,
                matched=c.matched,
            )
            for c in end.citations
        ],
        usage=common_pb2.Usage(prompt_tokens=end.prompt_tokens, completion_tokens=end.completion_tokens),
        trace_id=trace_id,
        degraded=end.degraded,
        finish_reason=FINISH_TO_PB[end.finish_reason],
        degraded_reasons=end.degraded_reasons,
        model=end.model,
    )
    if end.verdict is not None:
        v = end.verdict
        summary.verdict.CopyFrom(
            router_pb2.Verdict(
                decision=DECISION_TO_PB[v.decision],
                stage=STAGE_TO_PB[v.stage],
                findings=[finding_to_pb(f) for f in v.findings],
                message=v.message,
                turn=v.turn,
            )
        )
    return summary


@dataclass(frozen=True)
class RouterParts:
    """The use cases the servicer calls."""

    chat: ChatOrchestrator
    search: Searcher
    ingestor: Ingestor
    documents: Documents


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """`parts` exist once the router has loaded (its dependencies serving, Milvus open); before
    that health says NOT_SERVING and a call that comes anyway gets UNAVAILABLE naming what the
    router waits for.

    The streaming methods write through the context (grpc.aio takes a coroutine that does), so
    each write is bounded: a client that stops reading cannot hold a slot (`send`)."""

    def __init__(self, parts: Callable[[], RouterParts]) -> None:
        self._parts = parts

    async def Chat(  # type: ignore[override]  # writes through the context (see the class)
        self, request: router_pb2.ChatRequest, context: Context
    ) -> None:
        parts = self._parts()
        tenant = tenant_of(context)
        chat = ChatInput(
            messages=tuple(Message(m.role, m.content) for m in request.messages),
            collection=request.collection,
            top_k=request.top_k,
            sampling=sampling_from_pb(request.params),
            priority=_priority(request.priority),
            disable_retrieval=request.disable_retrieval,
        )
        trace_id = current_trace_id()
        # Up front, so a client has the trace id before the first text (which the output rail
        # releases a sentence at a time).
        await context.send_initial_metadata(((TRACE_ID_HEADER, trace_id),))
        write_timeout_s = parts.chat.settings.stream_write_timeout_s
        # Closed however the call ends (a stalled write, a cancel): the session slot is freed now.
        async with contextlib.aclosing(parts.chat.chat(tenant, chat, deadline_of(context))) as events:
            async for event in events:
                if isinstance(event, ChatDelta):
                    reply = router_pb2.ChatResponse(delta=event.text)
                else:
                    reply = router_pb2.ChatResponse(summary=_summary(event, trace_id))
                await send(context, reply, write_timeout_s)

    async def Search(self, request: router_pb2.SearchRequest, context: Context) -> router_pb2.SearchResponse:
        result = await self._parts().search.search(
            tenant_of(context), request.query, request.collection, request.top_k, deadline_of(context)
        )
        return router_pb2.SearchResponse(
            hits=[
                router_pb2.SearchHit(
                    document_id=c.document_id,
                    chunk_index=c.chunk_index,
                    score=c.score,
                    text=c.text,
                    metadata=c.metadata,
                )
                for c in result.chunks
            ],
            degraded=result.degraded,
            degraded_reasons=result.degraded_reasons,
        )

    async def Ingest(  # type: ignore[override]  # writes through the context (see the class)
        self, request_iterator: AsyncIterator[router_pb2.IngestRequest], context: Context
    ) -> None:
        ingestor = self._parts().ingestor
        tenant = tenant_of(context)
        deadline = deadline_of(context)
        s = ingestor.settings
        # A client that sends nothing for the idle bound ends the stream (only the wait counts).
        requests = paced(
            request_iterator, s.ingest_idle_timeout_s, lambda: _ingest_idle(s.ingest_idle_timeout_s)
        )
        # The tenant's stream slot is taken before the first message is read and given back on
        # every way out: done, an error, a cancel or a client gone.
        with ingestor.stream(tenant, deadline) as stream:
            # Says "accepted" before any document: a client that waits for it never writes into
            # a stream already refused (grpc aio would then report INTERNAL instead of the
            # refusal, grpc/grpc#36066).
            await context.send_initial_metadata(())
            async for request in requests:
                if not request.HasField("document"):
                    raise InvalidArgument(
                        "document", f"is required (message {stream.documents + 1} of the stream)"
                    )
                doc = request.document
                stored = await stream.ingest(
                    request.collection, DocumentInput(doc.id, doc.text, dict(doc.metadata))
                )
                progress = router_pb2.IngestResponse(
                    document_id=stored.document_id,
                    chunk_count=stored.chunk_count,
                    documents_ingested=stream.documents,
                    chunks_ingested=stream.chunks,
                )
                await send(context, progress, s.stream_write_timeout_s)
            # No flush: each document was durable when acknowledged above (see milvus_store).

    async def DeleteDocuments(
        self, request: router_pb2.DeleteDocumentsRequest, context: Context
    ) -> router_pb2.DeleteDocumentsResponse:
        # The repeated field itself, not a copy: its count is checked before anything walks it.
        documents, chunks = await self._parts().documents.delete(
            tenant_of(context), request.collection, request.document_ids, deadline_of(context)
        )
        return router_pb2.DeleteDocumentsResponse(deleted_documents=documents, deleted_chunks=chunks)

    async def ListCollections(
        self, request: router_pb2.ListCollectionsRequest, context: Context
    ) -> router_pb2.ListCollectionsResponse:
        collections = await self._parts().documents.collections(tenant_of(context), deadline_of(context))
        return router_pb2.ListCollectionsResponse(
            collections=[
                router_pb2.CollectionInfo(name=name, chunk_count=count) for name, count in collections
            ]
        )
