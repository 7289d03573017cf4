"""Retrieval, the same for Chat and Search: the query's vector, the tenant's top-k chunks from the
vector index, and the retrieval rail on each (a blocked chunk never reaches a prompt or a caller).
No gRPC here.

`on_failure` says what a failed embed or index call means: "fail" raises (Search, or Chat with
FORGE_ROUTER_ON_RETRIEVAL_FAILURE=fail), "degrade" goes on without context and notes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from opentelemetry.util.types import AttributeValue

from services.common.errors import Unavailable
from services.router import metrics
from services.router.deadline import Deadline
from services.router.ports import INDEX_FAILURES, ContextChunk, Embeddings, Stage, VectorIndex
from services.router.stages import Degradation, OnFailure, Rails, StageRunner, blocked


class Retriever:
    def __init__(self, stages: StageRunner, rails: Rails, embeddings: Embeddings, index: VectorIndex) -> None:
        self._stages = stages
        self._rails = rails
        self._embeddings = embeddings
        self._index = index

    async def query_vector(
        self, query: str, deadline: Deadline, degradation: Degradation, on_failure: OnFailure
    ) -> list[float] | None:
        """None when the embed service failed and `on_failure` is degrade."""
        timeout = self._stages.timeout("query embedding", deadline)
        try:
            vectors = await self._stages.run(
                "embed_query", self._embeddings.embed([query], True, timeout), {"forge.texts": 1}
            )
        except Unavailable as exc:
            if on_failure == "fail":
                raise
            degradation.note("embed", exc)
            return None
        return vectors[0]

    async def search(
        self,
        tenant: str,
        collection: str,
        vector: Sequence[float],
        top_k: int,
        deadline: Deadline,
        degradation: Degradation,
        on_failure: OnFailure,
    ) -> list[ContextChunk]:
        """The top-k hits, before the retrieval rail; [] when the index failed and `on_failure` is
        degrade."""
        timeout = self._stages.timeout("the Milvus search", deadline)
        try:
            return await self._stages.run(
                "search",
                self._index.search(tenant, collection, vector, top_k, timeout),
                _search_attributes(tenant, collection, top_k),
                lambda found: {"forge.chunks_retrieved": len(found)},
            )
        except INDEX_FAILURES as exc:
            if on_failure == "fail":
                raise
            degradation.note("milvus", exc)
            return []

    async def checked(
        self, hits: Sequence[ContextChunk], deadline: Deadline, degradation: Degradation
    ) -> list[ContextChunk]:
        """The hits that pass the retrieval rail (indirect prompt injection), redacted where it says so."""
        if not hits:
            return []
        verdicts = await asyncio.gather(
            *(self._rails.check(h.text, Stage.RETRIEVAL, deadline, degradation) for h in hits)
        )
        chunks: list[ContextChunk] = []
        for hit, verdict in zip(hits, verdicts, strict=True):
            if blocked(verdict):
                metrics.CHUNKS_BLOCKED.inc()
                continue
            chunks.append(hit if verdict is None else replace(hit, text=verdict.text_to_use(hit.text)))
        return chunks


def _search_attributes(tenant: str, collection: str, top_k: int) -> dict[str, AttributeValue]:
    return {"forge.tenant": tenant, "forge.collection": collection, "forge.top_k": top_k}
