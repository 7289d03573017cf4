"""Ingestion: validate a document, split it into token-aware overlapping chunks, embed them in
batches, and replace the document's chunks in one upsert. No gRPC here.

Everything that can fail slowly (chunking, embedding) happens before anything is written, and
the write is one upsert keyed by (tenant, collection, document id, chunk): a failure mid-document
leaves the previous version whole, and re-ingesting a document replaces it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.errors import InvalidArgument, Unavailable
from services.router import metrics
from services.router.chunking import Chunker
from services.router.deadline import Deadline
from services.router.ports import Embeddings
from services.router.settings import RouterSettings
from services.router.store import ChunkRecord, StoreUnavailable, VectorStore

MARKDOWN_SUFFIXES = (".md", ".markdown")
MAX_METADATA_ENTRIES = 32
MAX_METADATA_CHARS = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
class Stored:
    document_id: str
    chunk_count: int


class Ingestor:
    def __init__(
        self, settings: RouterSettings, chunker: Chunker, embeddings: Embeddings, store: VectorStore
    ) -> None:
        self.settings = settings
        self.chunker = chunker
        self.embeddings = embeddings
        self.store = store
        # The embed service batches across requests too; a few batches in flight keep it busy.
        self._embed_slots = asyncio.Semaphore(4)

    def validate(self, document: DocumentInput, field: str = "document") -> None:
        s = self.settings
        if not document.id.strip():
            raise InvalidArgument(f"{field}.id", "must not be empty")
        if len(document.id) > s.max_document_id_chars or _CONTROL.search(document.id):
            raise InvalidArgument(
                f"{field}.id",
                f"must be at most {s.max_document_id_chars} characters without control characters",
            )
        if not document.text.strip():
            raise InvalidArgument(f"{field}.text", f"must not be empty (document {document.id!r})")
        if len(document.text) > s.max_document_chars:
            raise InvalidArgument(
                f"{field}.text",
                f"must be at most {s.max_document_chars} characters, got {len(document.text)} "
                f"(document {document.id!r})",
            )
        if len(document.metadata) > MAX_METADATA_ENTRIES:
            raise InvalidArgument(f"{field}.metadata", f"at most {MAX_METADATA_ENTRIES} entries")
        for key, value in document.metadata.items():
            if len(key) + len(value) > MAX_METADATA_CHARS:
                raise InvalidArgument(
                    f"{field}.metadata[{key[:40]}]",
                    f"key and value must total at most {MAX_METADATA_CHARS} chars",
                )

    async def ingest(
        self, tenant: str, collection: str, document: DocumentInput, deadline: Deadline
    ) -> Stored:
        self.validate(document)
        chunks = await asyncio.to_thread(self.chunker.chunk, document.text, document.markdown)
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
        try:
            stored = await self.store.replace_document(tenant, collection, document.id, records)
        except StoreUnavailable as exc:
            raise Unavailable("milvus", str(exc)) from exc
        metrics.INGESTED_DOCUMENTS.inc()
        metrics.INGESTED_CHUNKS.inc(stored)
        return Stored(document.id, stored)

    async def _embed(self, texts: list[str], deadline: Deadline) -> list[list[float]]:
        async with self._embed_slots:
            timeout = deadline.stage_timeout("embedding chunks", 1.0, self.settings.stage_timeout_cap_s * 6)
            return await self.embeddings.embed(texts, False, timeout)

    async def flush(self, collections: set[str]) -> None:
        try:
            for collection in sorted(collections):
                await self.store.flush(collection)
        except StoreUnavailable as exc:
            raise Unavailable("milvus", str(exc)) from exc
