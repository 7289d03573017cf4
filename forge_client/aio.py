"""The asyncio client (grpc.aio): the same calls as `Client`, awaited."""

# `timeout=` is each call's gRPC deadline, sent to the router so that it stops work the caller
# gave up on; asyncio.timeout() could not tell the server anything.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

from forge.v1 import ops_pb2, ops_pb2_grpc, router_pb2, router_pb2_grpc
from google.protobuf.message import Message as ProtoMessage
from grpc import aio

from forge_client import _convert
from forge_client._common import (
    DEFAULT,
    ChatOptions,
    ClientBase,
    IngestTally,
    ProgressCallback,
    Question,
    Timeout,
    no_summary,
)
from forge_client.documents import AsyncOutbox, documents_from_files, find_files
from forge_client.errors import Cancelled, Internal, from_rpc_error
from forge_client.retry import Retrier, call_with_retries_async
from forge_client.types import (
    Capacity,
    ChatDelta,
    ChatSummary,
    Collection,
    DeleteResult,
    Document,
    GpuStats,
    IngestResult,
    Priority,
    SearchResult,
    ServerInfo,
)

Reply = TypeVar("Reply", bound=ProtoMessage)
ChatCall = aio.UnaryStreamCall[router_pb2.ChatRequest, router_pb2.ChatResponse]


class AsyncChatStream:
    """`ChatStream` for asyncio: `async for delta in stream`, then `stream.summary`;
    `await stream.text()`; `async with` or `cancel()` to stop early."""

    def __init__(
        self,
        stub: router_pb2_grpc.RouterServiceAsyncStub,
        request: router_pb2.ChatRequest,
        metadata: tuple[tuple[str, str], ...],
        timeout_s: float | None,
        retrier: Retrier,
    ) -> None:
        self._stub, self._request, self._metadata = stub, request, metadata
        self._timeout_s, self._retrier = timeout_s, retrier
        self._call: ChatCall | None = None
        self._cancelled = False
        self._summary: ChatSummary | None = None
        self._deltas = self._run()

    async def _open(self, timeout_s: float | None) -> tuple[ChatCall, object]:
        if self._cancelled:  # while waiting to retry
            raise Cancelled("the chat was cancelled by the caller")
        call = self._stub.Chat(self._request, metadata=self._metadata, timeout=timeout_s)
        self._call = call
        try:
            return call, await call.read()
        except aio.AioRpcError as err:
            raise from_rpc_error(err) from err

    async def _run(self) -> AsyncGenerator[ChatDelta, None]:
        try:
            call, reply = await call_with_retries_async(self._retrier, self._timeout_s, self._open)
            while isinstance(reply, router_pb2.ChatResponse):
                if self._summary is not None:
                    call.cancel()
                    raise Internal("the router sent more of the chat after its summary")
                if reply.HasField("summary"):
                    self._summary = _convert.chat_summary(reply.summary)
                elif reply.delta:
                    yield ChatDelta(reply.delta)
                reply = await call.read()
        except aio.AioRpcError as err:
            raise from_rpc_error(err) from err
        except asyncio.CancelledError:
            # grpc.aio answers a read of a call cancelled with `cancel()` so; the sync client
            # raises CANCELLED. Same here, unless this task itself is being cancelled.
            task = asyncio.current_task()
            if self._cancelled and (task is None or not task.cancelling()):
                raise Cancelled("the chat was cancelled by the caller") from None
            raise
        if self._summary is None:
            raise no_summary()

    def __aiter__(self) -> AsyncChatStream:
        return self

    async def __anext__(self) -> ChatDelta:
        return await anext(self._deltas)

    @property
    def summary(self) -> ChatSummary:
        if self._summary is None:
            raise RuntimeError("the summary comes after the last delta: iterate the stream or call text()")
        return self._summary

    async def text(self) -> str:
        return "".join([d.text async for d in self])

    def cancel(self) -> None:
        """Stop the answer: the router frees the session and the LLM aborts the generation. A
        reader of the stream then gets `Cancelled`."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()
        await self._deltas.aclose()


class AsyncClient(ClientBase):
    """The asyncio client; the constructor's arguments are `Client`'s. Use it as an async context
    manager, or `await client.close()`."""

    def _open_channel(self) -> None:
        self._channel = self.connection.aio_channel()
        # The *AsyncStub classes exist for type checkers only; the stub over an aio channel is one.
        self._router: router_pb2_grpc.RouterServiceAsyncStub = router_pb2_grpc.RouterServiceStub(
            self._channel
        )
        self._admin: router_pb2_grpc.AdminServiceAsyncStub = router_pb2_grpc.AdminServiceStub(self._channel)
        self._ops: ops_pb2_grpc.OpsServiceAsyncStub = ops_pb2_grpc.OpsServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _unary(
        self, method: Callable[..., Awaitable[Reply]], request: ProtoMessage, timeout: Timeout
    ) -> Reply:
        async def attempt(timeout_s: float | None) -> Reply:
            try:
                return await method(request, metadata=self._metadata, timeout=timeout_s)
            except aio.AioRpcError as err:
                raise from_rpc_error(err) from err

        return await call_with_retries_async(self._retrier, self._timeout(timeout), attempt)

    def chat(
        self,
        question: Question,
        *,
        collection: str = "",
        top_k: int = 0,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Iterable[str] = (),
        priority: Priority = Priority.INTERACTIVE,
        retrieval: bool = True,
        timeout: Timeout = DEFAULT,
    ) -> AsyncChatStream:
        """As `Client.chat`; the stream starts at the first `anext()`."""
        options = ChatOptions(
            collection, top_k, max_tokens, temperature, top_p, seed, tuple(stop), priority, retrieval
        )
        return AsyncChatStream(
            self._router, options.request(question), self._metadata, self._timeout(timeout), self._retrier
        )

    async def search(
        self, query: str, *, collection: str = "", top_k: int = 0, timeout: Timeout = DEFAULT
    ) -> SearchResult:
        request = router_pb2.SearchRequest(query=query, collection=collection, top_k=top_k)
        return _convert.search_result(await self._unary(self._router.Search, request, timeout))

    async def ingest(
        self,
        documents: Iterable[Document] | AsyncIterable[Document],
        *,
        collection: str = "",
        on_progress: ProgressCallback | None = None,
        timeout: Timeout = DEFAULT,
    ) -> IngestResult:
        """As `Client.ingest`; `documents` may be an async iterable too."""
        outbox = AsyncOutbox(documents)
        tally = IngestTally(on_progress)
        started = [0]

        async def attempt(timeout_s: float | None) -> None:
            started[0] = outbox.acked
            call = self._router.Ingest(metadata=self._metadata, timeout=timeout_s)
            try:
                await _send_acknowledged(call, outbox, tally, collection)
            except aio.AioRpcError as err:
                raise from_rpc_error(err) from err
            finally:
                call.cancel()  # a no-op once the stream has ended well

        try:
            await call_with_retries_async(
                self._retrier, self._timeout(timeout), attempt, progressed=lambda: outbox.acked > started[0]
            )
        finally:
            outbox.close()
        if outbox.error is not None:
            raise outbox.error
        return IngestResult(tally.documents, tally.chunks)

    async def ingest_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        collection: str = "",
        on_progress: ProgressCallback | None = None,
        timeout: Timeout = DEFAULT,
    ) -> IngestResult:
        """As `Client.ingest_paths` (files are read on a worker thread)."""
        files = find_files(paths)
        return await self.ingest(
            documents_from_files(files), collection=collection, on_progress=on_progress, timeout=timeout
        )

    async def delete(
        self, document_ids: Iterable[str], *, collection: str = "", timeout: Timeout = DEFAULT
    ) -> DeleteResult:
        request = router_pb2.DeleteDocumentsRequest(collection=collection, document_ids=list(document_ids))
        reply = await self._unary(self._router.DeleteDocuments, request, timeout)
        return DeleteResult(reply.deleted_documents, reply.deleted_chunks)

    async def list_collections(self, *, timeout: Timeout = DEFAULT) -> tuple[Collection, ...]:
        request = router_pb2.ListCollectionsRequest()
        return _convert.collections(await self._unary(self._router.ListCollections, request, timeout))

    async def capacity(self, *, timeout: Timeout = DEFAULT) -> Capacity:
        request = router_pb2.GetCapacityRequest()
        return _convert.capacity(await self._unary(self._admin.GetCapacity, request, timeout))

    async def gpu_stats(self, *, timeout: Timeout = DEFAULT) -> GpuStats:
        request = router_pb2.AdminServiceGetGpuStatsRequest()
        return _convert.gpu_stats(await self._unary(self._admin.GetGpuStats, request, timeout))

    async def info(self, *, timeout: Timeout = DEFAULT) -> ServerInfo:
        return _convert.server_info(await self._unary(self._ops.GetInfo, ops_pb2.GetInfoRequest(), timeout))


# How long to wait for the router to accept a stream before writing anyway (a router from
# before acceptance was announced sends its headers with the first reply only).
ACCEPT_WAIT_S = 5.0


async def _send_acknowledged(call: Any, outbox: AsyncOutbox, tally: IngestTally, collection: str) -> None:
    """Send one attempt's documents, each after the one before it is acknowledged.

    No write is ever in flight when the router ends the stream (a refusal before the first
    document, a document it rejects): grpc aio replaces the router's status by INTERNAL when a
    write races the end of the call (grpc/grpc#36066), and the refusal (busy tenant, full
    router, a field over its limit) is what the caller and the retry policy must see. The
    router embeds one document at a time, so waiting for each acknowledgement costs a round
    trip per document, not throughput."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(call.initial_metadata(), ACCEPT_WAIT_S)
    if not call.done():
        async for doc in outbox.attempt():
            await call.write(_convert.ingest_request(collection, doc))
            # read() raises the router's status when the stream ended badly, EOF when well.
            reply = await call.read()
            if reply is aio.EOF:
                raise Internal("the router ended the ingest stream before acknowledging a document")
            assert isinstance(reply, router_pb2.IngestResponse)
            outbox.ack()
            tally.stored(reply)
        await call.done_writing()
    if await call.read() is not aio.EOF:
        raise Internal("the router acknowledged more documents than it was sent")
