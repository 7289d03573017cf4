"""Ingestion: validate a document, split it into token-aware overlapping chunks, embed them in
batches, and replace the document's chunks in one upsert. No gRPC here.

Everything that can fail slowly (chunking, embedding) happens before anything is written, and
the write is one upsert keyed by (tenant, collection, document id, chunk): a failure mid-document
leaves the previous version whole, and re-ingesting a document replaces it. Every call gets what
is left of the caller's deadline (or `call_timeout_s` without one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from services.router import metrics, validation
from services.router.chunking import Chunker
from services.router.deadline import Deadline
from services.router.ports import ChunkRecord, Embeddings, VectorIndex
from services.router.settings import RouterSettings

MARKDOWN_SUFFIXES = (".md", ".markdown")


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


class Ingestor:
    def __init__(
        self, settings: RouterSettings, chunker: Chunker, embeddings: Embeddings, index: VectorIndex
    ) -> None:
        self.settings = settings
        self._chunker = chunker
        self._embeddings = embeddings
        self._index = index
        self._embed_slots = asyncio.Semaphore(settings.embed_batches_in_flight)

    def validate(self, document: DocumentInput, field: str = "document") -> None:
        s = self.settings
        validation.document_id(document.id, f"{field}.id", s.max_document_id_chars)
        validation.text(document.text, f"{field}.text", s.max_document_chars)
        validation.metadata(document.metadata, f"{field}.metadata")

    def collection(self, name: str) -> str:
        return validation.collection(name, self.settings.default_collection)

    async def ingest(
        self, tenant: str, collection: str, document: DocumentInput, deadline: Deadline
    ) -> IngestedDocument:
        self.validate(document)
        collection = self.collection(collection)
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

    async def flush(self, collections: set[str], deadline: Deadline) -> None:
        for collection in sorted(collections):
            await self._index.flush(collection, self._timeout("flushing", deadline))

    async def _embed(self, texts: list[str], deadline: Deadline) -> list[list[float]]:
        async with self._embed_slots:
            return await self._embeddings.embed(texts, False, self._timeout("embedding chunks", deadline))

    def _timeout(self, what: str, deadline: Deadline) -> float:
        return deadline.rest(what, self.settings.call_timeout_s)
