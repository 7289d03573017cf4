"""The synchronous client."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TypeVar

import grpc
from forge.v1 import ops_pb2, ops_pb2_grpc, router_pb2, router_pb2_grpc
from google.protobuf.message import Message as ProtoMessage

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
from forge_client.documents import Outbox, documents_from_files, find_files
from forge_client.errors import Cancelled, Internal, from_rpc_error
from forge_client.retry import Retrier, call_with_retries
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


class ChatStream:
    """One answer, streaming: iterate it for `ChatDelta`s; `summary` is there once the stream has
    ended. The call starts at the first `next()` (which is where a refusal is retried: only before
    any text arrived). `text()` reads the whole answer at once. Use it as a context manager, or
    call `cancel()`, to stop a generation early."""

    def __init__(
        self,
        stub: router_pb2_grpc.RouterServiceStub,
        request: router_pb2.ChatRequest,
        metadata: tuple[tuple[str, str], ...],
        timeout_s: float | None,
        retrier: Retrier,
    ) -> None:
        self._stub, self._request, self._metadata = stub, request, metadata
        self._timeout_s, self._retrier = timeout_s, retrier
        self._call: grpc.Call | None = None
        self._cancelled = False
        self._summary: ChatSummary | None = None
        self._deltas = self._run()

    def _open(self, timeout_s: float | None) -> tuple[Iterator[router_pb2.ChatResponse], object]:
        if self._cancelled:  # while waiting to retry
            raise Cancelled("the chat was cancelled by the caller")
        call = self._stub.Chat(self._request, metadata=self._metadata, timeout=timeout_s)
        self._call = call
        try:
            return call, next(call, None)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def _run(self) -> Iterator[ChatDelta]:
        call, first = call_with_retries(self._retrier, self._timeout_s, self._open)
        try:
            replies = iter(call)
            reply = first
            while isinstance(reply, router_pb2.ChatResponse):
                if self._summary is not None:
                    self.cancel()
                    raise Internal("the router sent more of the chat after its summary")
                if reply.HasField("summary"):
                    self._summary = _convert.chat_summary(reply.summary)
                elif reply.delta:
                    yield ChatDelta(reply.delta)
                reply = next(replies, None)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        if self._summary is None:
            raise no_summary()

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> ChatDelta:
        return next(self._deltas)

    @property
    def summary(self) -> ChatSummary:
        if self._summary is None:
            raise RuntimeError("the summary comes after the last delta: iterate the stream or call text()")
        return self._summary

    def text(self) -> str:
        """The rest of the answer, read to the end (then `summary` is set)."""
        return "".join(d.text for d in self)

    def cancel(self) -> None:
        """Stop the answer: the router frees the session and the LLM aborts the generation. A
        reader of the stream then gets `Cancelled`."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


class Client(ClientBase):
    """A synchronous client of a Forge router (a context manager; `close()` otherwise).

    `address` defaults to env FORGE_ROUTER, then 127.0.0.1:50051; `api_key` to env FORGE_API_KEY
    (pass "" for none); `tenant` is sent as `x-forge-tenant` (an admin key may act for any tenant,
    a tenant key only for its own). `tls`: False for plaintext, True for the system's CAs, or the
    CA certificate (path or PEM bytes) of a router serving TLS; `server_name` overrides the name
    checked in its certificate. `timeout` is every call's deadline in seconds (None: no deadline),
    retries and whole streams included; each method takes its own `timeout=` too. `retry` says
    how transient failures are retried (see `RetryPolicy`); `on_retry(error, attempt, wait_s)`
    hears of each retry before its wait."""

    def _open_channel(self) -> None:
        self._channel = self.connection.channel()
        self._router = router_pb2_grpc.RouterServiceStub(self._channel)
        self._admin = router_pb2_grpc.AdminServiceStub(self._channel)
        self._ops = ops_pb2_grpc.OpsServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _unary(
        self,
        method: Callable[..., Reply],
        request: ProtoMessage,
        timeout: Timeout,
    ) -> Reply:
        def attempt(timeout_s: float | None) -> Reply:
            try:
                return method(request, metadata=self._metadata, timeout=timeout_s)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err

        return call_with_retries(self._retrier, self._timeout(timeout), attempt)

    # --- RouterService ---------------------------------------------------------------------------

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
    ) -> ChatStream:
        """Ask about the tenant's documents. `question` is the user's message, or the whole
        conversation as `Message`s (or {"role", "content"} dicts). `collection` "" and `top_k` 0
        are the router's defaults; unset sampling parameters are the model's. `retrieval=False`
        answers without documents."""
        options = ChatOptions(
            collection, top_k, max_tokens, temperature, top_p, seed, tuple(stop), priority, retrieval
        )
        return ChatStream(
            self._router, options.request(question), self._metadata, self._timeout(timeout), self._retrier
        )

    def search(
        self, query: str, *, collection: str = "", top_k: int = 0, timeout: Timeout = DEFAULT
    ) -> SearchResult:
        """The chunks a chat would be grounded on, best first."""
        request = router_pb2.SearchRequest(query=query, collection=collection, top_k=top_k)
        return _convert.search_result(self._unary(self._router.Search, request, timeout))

    def ingest(
        self,
        documents: Iterable[Document],
        *,
        collection: str = "",
        on_progress: ProgressCallback | None = None,
        timeout: Timeout = DEFAULT,
    ) -> IngestResult:
        """Store documents (any iterable, read once, lazily); `on_progress` hears of each one as
        it becomes durable. A transient failure resends only the documents not yet acknowledged."""
        outbox = Outbox(documents)
        tally = IngestTally(on_progress)
        started = [0]

        def attempt(timeout_s: float | None) -> None:
            started[0] = outbox.acked
            requests = (_convert.ingest_request(collection, d) for d in outbox.attempt())
            call = self._router.Ingest(requests, metadata=self._metadata, timeout=timeout_s)
            try:
                for reply in call:
                    outbox.ack()
                    tally.stored(reply)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from err
            finally:
                call.cancel()  # a no-op once the stream has ended

        call_with_retries(
            self._retrier, self._timeout(timeout), attempt, progressed=lambda: outbox.acked > started[0]
        )
        if outbox.error is not None:
            raise outbox.error
        return IngestResult(tally.documents, tally.chunks)

    def ingest_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        collection: str = "",
        on_progress: ProgressCallback | None = None,
        timeout: Timeout = DEFAULT,
    ) -> IngestResult:
        """Ingest files, and the .txt/.md/.rst files under folders: one document per file, id =
        the file name (so ingesting a file again replaces it), metadata source = its path."""
        files = find_files(paths)
        return self.ingest(
            documents_from_files(files), collection=collection, on_progress=on_progress, timeout=timeout
        )

    def delete(
        self, document_ids: Iterable[str], *, collection: str = "", timeout: Timeout = DEFAULT
    ) -> DeleteResult:
        """Delete documents by id (absent ids are fine). Retried like a read: deleting is
        idempotent, though a retry's counts leave out what the lost attempt deleted."""
        request = router_pb2.DeleteDocumentsRequest(collection=collection, document_ids=list(document_ids))
        reply = self._unary(self._router.DeleteDocuments, request, timeout)
        return DeleteResult(reply.deleted_documents, reply.deleted_chunks)

    def list_collections(self, *, timeout: Timeout = DEFAULT) -> tuple[Collection, ...]:
        """The tenant's collections with their chunk counts."""
        reply = self._unary(self._router.ListCollections, router_pb2.ListCollectionsRequest(), timeout)
        return _convert.collections(reply)

    # --- AdminService and OpsService (admin keys only) -------------------------------------------

    def capacity(self, *, timeout: Timeout = DEFAULT) -> Capacity:
        """Admission: sessions, the queue, admissions and rejections by reason, per-tenant use."""
        reply = self._unary(self._admin.GetCapacity, router_pb2.GetCapacityRequest(), timeout)
        return _convert.capacity(reply)

    def gpu_stats(self, *, timeout: Timeout = DEFAULT) -> GpuStats:
        """The mesh's GPU ledger: the device, every service's slice against its use."""
        request = router_pb2.AdminServiceGetGpuStatsRequest()
        return _convert.gpu_stats(self._unary(self._admin.GetGpuStats, request, timeout))

    def info(self, *, timeout: Timeout = DEFAULT) -> ServerInfo:
        """The router's version, profile, settings and what it hears from its dependencies."""
        return _convert.server_info(self._unary(self._ops.GetInfo, ops_pb2.GetInfoRequest(), timeout))
