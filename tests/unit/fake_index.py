"""A `VectorIndex` stand-in for the use cases' unit tests: fixed search hits, documents kept whole
as the real index promises, every call's timeout recorded, and a failure to raise on demand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.router.ports import ChunkRecord, ContextChunk


@dataclass
class FakeIndex:
    hits: list[ContextChunk] = field(default_factory=list)
    failure: Exception | None = None
    timeouts: list[float] = field(default_factory=list)
    documents: dict[tuple[str, str, str], list[ChunkRecord]] = field(default_factory=dict)

    def _call(self, timeout_s: float) -> None:
        self.timeouts.append(timeout_s)
        if self.failure is not None:
            raise self.failure

    async def search(
        self, tenant: str, collection: str, vector: Sequence[float], top_k: int, timeout_s: float
    ) -> list[ContextChunk]:
        self._call(timeout_s)
        return self.hits[:top_k]

    async def replace_document(
        self,
        tenant: str,
        collection: str,
        document_id: str,
        chunks: Sequence[ChunkRecord],
        timeout_s: float,
    ) -> int:
        self._call(timeout_s)
        self.documents[(tenant, collection, document_id)] = list(chunks)
        return len(chunks)

    async def delete_documents(
        self, tenant: str, collection: str, document_ids: Sequence[str], timeout_s: float
    ) -> tuple[int, int]:
        self._call(timeout_s)
        gone = [self.documents.pop((tenant, collection, d), None) for d in document_ids]
        return sum(g is not None for g in gone), sum(len(g) for g in gone if g is not None)

    async def list_collections(self, tenant: str, timeout_s: float) -> list[tuple[str, int]]:
        self._call(timeout_s)
        return sorted({(c, 0) for t, c, _ in self.documents if t == tenant})
