"""Ingestion: validate a document, split it into token-aware overlapping chunks, embed them in
batches, and store them as the document's new version. No gRPC here.

Everything that can fail slowly (chunking, embedding) happens before anything is written, and the
index replaces a document whole (`VectorIndex.replace_document`: readers see the old version or the
new one, never a mix, whatever fails or is killed when). A document is durable once the index has
acknowledged it, so a stream acknowledges each document as it is stored and ends without a flush
(servers rate-limit flushes per collection: one per stream would fail busy ingest). Every call gets
what is left of the caller's deadline (or `call_timeout_s` without one).

Caps (issue 12), each checked before any work: a document's size and metadata, documents per
stream, Ingest streams open per tenant (RESOURCE_EXHAUSTED `INGEST_STREAMS`, the slot released on
every way out of the stream), and collections per tenant (RESOURCE_EXHAUSTED `COLLECTION_LIMIT`).
Both counts of things held at once are per router process: with several replicas a tenant may hold
up to that many times the limit of streams, and concurrent streams on different replicas may each
add one collection past the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument, ResourceExhausted
from services.router import metrics, validation
from services.router.chunking import Chunker
from services.router.deadline import Deadline
from services.router.ports import ChunkRecord, Embeddings, VectorIndex
from services.router.settings import RouterSettings

MARKDOWN_SUFFIXES = (".md", ".markdown")
INGEST_STREAMS = "INGEST_STREAMS"
COLLECTION_LIMIT = "COLLECTION_LIMIT"
# An ingest stream lasts seconds to minutes: a refused caller waits a few seconds, not one.
STREAM_RETRY_AFTER_S = 5.0
# Another collection frees up only when the tenant deletes one's documents: retrying soon is useless.
COLLECTION_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class DocumentInput:
    id: str
    text: str
    metadata: Mapping[str, str]

    @property
    def markdown(self) -> bool:
        content_type = self.metadata.get("content_type", "")
        return content_type == "text/markdown" or self.id.lower().endswith(MARKDOWN_SUFFIXES)


@dataclass(frozen=True)
class IngestedDocument:
    document_id: str
    chunk_count: int


class StreamSlots:
    """Ingest streams open per tenant, each held from the stream's start to its end, whatever the
    end (done, error, cancel, client gone): `hold` is a plain context manager whose exit cannot be
    interrupted half-way."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def open(self, tenant: str) -> int:
        return self._open.get(tenant, 0)

    @contextlib.contextmanager
    def hold(self, tenant: str) -> Iterator[None]:
        held = self._open.get(tenant, 0)
        if held >= self.limit:
            raise ResourceExhausted(
                INGEST_STREAMS,
                f"tenant {tenant!r} already has {held} Ingest streams open, the limit per tenant; "
                f"retry in {STREAM_RETRY_AFTER_S:.0f} s or send the documents in an open stream",
                STREAM_RETRY_AFTER_S,
            )
        self._open[tenant] = held + 1
        try:
            yield
        finally:
            left = self._open[tenant] - 1
            if left:
                self._open[tenant] = left
            else:
                del self._open[tenant]


@dataclass
class _TenantCollections:
    """New collections a tenant's open streams are writing into, before they show in the index."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: dict[str, int] = field(default_factory=dict)  # collection -> streams writing it
    users: int = 0  # streams using this entry; it is dropped at 0


@dataclass
class _StreamCollections:
    admitted: set[str] = field(default_factory=set)  # looked at and let in: not looked at again
    claimed: set[str] = field(default_factory=set)  # of those, new ones counted in `pending`


class Ingestor:
    def __init__(
        self, settings: RouterSettings, chunker: Chunker, embeddings: Embeddings, index: VectorIndex
    ) -> None:
        self.settings = settings
        self._chunker = chunker
        self._embeddings = embeddings
        self._index = index
        self._embed_slots = asyncio.Semaphore(settings.embed_batches_in_flight)
        self.streams = StreamSlots(settings.max_ingest_streams_per_tenant)
        self._tenants: dict[str, _TenantCollections] = {}

    def validate(self, document: DocumentInput, field: str = "document") -> None:
        s = self.settings
        validation.document_id(document.id, f"{field}.id", s.max_document_id_chars)
        validation.text(document.text, f"{field}.text", s.max_document_chars)
        validation.metadata(
            document.metadata,
            f"{field}.metadata",
            s.max_metadata_entries,
            s.max_metadata_key_bytes,
            s.max_metadata_bytes,
        )

    def collection(self, name: str) -> str:
        return validation.collection(name, self.settings.default_collection)

    @contextlib.contextmanager
    def stream(self, tenant: str, deadline: Deadline) -> Iterator[IngestStream]:
        """One Ingest stream of `tenant`: refused at once (RESOURCE_EXHAUSTED) when the tenant has
        its limit of streams open; the slot and the stream's claims on new collections are given
        back however the stream ends (a plain context manager: no await can interrupt that)."""
        with self.streams.hold(tenant), self._claims(tenant) as mine:
            yield IngestStream(self, tenant, deadline, mine)

    async def ingest(
        self, tenant: str, collection: str, document: DocumentInput, deadline: Deadline
    ) -> IngestedDocument:
        """One document on its own (a stream of one, without a stream slot)."""
        self.validate(document)
        collection = self.collection(collection)
        with self._claims(tenant) as mine:
            await self._admit_collection(tenant, collection, mine, deadline)
            return await self._write(tenant, collection, document, deadline)

    @contextlib.contextmanager
    def _claims(self, tenant: str) -> Iterator[_StreamCollections]:
        """The collections one stream has been let into; its claims on new ones are given back
        when it ends (by then what it wrote shows in the index)."""
        entry = self._tenants.get(tenant)
        if entry is None:
            entry = self._tenants[tenant] = _TenantCollections()
        entry.users += 1
        mine = _StreamCollections()
        try:
            yield mine
        finally:
            for name in mine.claimed:
                left = entry.pending[name] - 1
                if left:
                    entry.pending[name] = left
                else:
                    del entry.pending[name]
            entry.users -= 1
            if entry.users == 0:
                del self._tenants[tenant]

    async def _admit_collection(
        self, tenant: str, collection: str, mine: _StreamCollections, deadline: Deadline
    ) -> None:
        """Refuse a collection that would be one more than the tenant's limit. The tenant's
        collections are the default one, those it holds chunks in, and the new ones its open
        streams are writing into; looking and claiming happen under the tenant's lock, so two of
        its streams cannot both take the last place. A stream looks once per collection."""
        s = self.settings
        if collection == s.default_collection or collection in mine.admitted:
            return
        entry = self._tenants[tenant]
        async with entry.lock:
            listed = await self._index.list_collections(
                tenant, self._timeout("counting the tenant's collections", deadline)
            )
            # The index lists the collections the tenant has chunks in (and the default one).
            held = {name for name, _ in listed} | {s.default_collection}
            new = collection not in held and collection not in entry.pending
            if new and len(held | entry.pending.keys()) >= s.max_collections_per_tenant:
                raise ResourceExhausted(
                    COLLECTION_LIMIT,
                    f"collection: {validation.quoted(collection)} would be one more than the limit "
                    f"of {s.max_collections_per_tenant} collections per tenant; ingest into an "
                    "existing collection, or delete the documents of one no longer needed",
                    COLLECTION_RETRY_AFTER_S,
                )
            if collection not in held:
                entry.pending[collection] = entry.pending.get(collection, 0) + 1
                mine.claimed.add(collection)
        mine.admitted.add(collection)

    async def _write(
        self, tenant: str, collection: str, document: DocumentInput, deadline: Deadline
    ) -> IngestedDocument:
        """Chunk, embed and store a validated document in an admitted collection."""
        chunks = await asyncio.to_thread(self._chunker.chunk, document.text, document.markdown)
        texts = [c.text for c in chunks]
        size = self.settings.embed_batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        vectors = [
            v for batch in await asyncio.gather(*(self._embed(b, deadline) for b in batches)) for v in batch
        ]
        records = [
            ChunkRecord(document.id, chunk.index, chunk.text, vector, dict(document.metadata))
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        stored = await self._index.replace_document(
            tenant, collection, document.id, records, self._timeout("storing the document", deadline)
        )
        metrics.INGESTED_DOCUMENTS.inc()
        metrics.INGESTED_CHUNKS.inc(stored)
        return IngestedDocument(document.id, stored)

    async def _embed(self, texts: list[str], deadline: Deadline) -> list[list[float]]:
        async with self._embed_slots:
            return await self._embeddings.embed(texts, False, self._timeout("embedding chunks", deadline))

    def _timeout(self, what: str, deadline: Deadline) -> float:
        return deadline.rest(what, self.settings.call_timeout_s)


class IngestStream:
    """One Ingest call's documents, in order: each checked (the stream's document count, then the
    document, then its collection) before any work is done for it."""

    def __init__(
        self, ingestor: Ingestor, tenant: str, deadline: Deadline, collections: _StreamCollections
    ) -> None:
        self._ingestor = ingestor
        self.tenant = tenant
        self._deadline = deadline
        self._collections = collections
        self.documents = 0
        self.chunks = 0

    async def ingest(self, collection: str, document: DocumentInput) -> IngestedDocument:
        ingestor = self._ingestor
        limit = ingestor.settings.max_documents_per_stream
        if self.documents >= limit:
            raise InvalidArgument(
                "document",
                f"at most {limit} documents per Ingest stream; send the rest in another stream",
            )
        ingestor.validate(document)
        name = ingestor.collection(collection)
        await ingestor._admit_collection(self.tenant, name, self._collections, self._deadline)
        # Durable once it returns: the caller may acknowledge it at once.
        stored = await ingestor._write(self.tenant, name, document, self._deadline)
        self.documents += 1
        self.chunks += stored.chunk_count
        return stored
