"""What every Milvus backend of `VectorStore` must do: one async function per behaviour, run by
test_store.py (Milvus Lite) and test_milvus_server.py (a real Milvus server) against their own store.

Each case takes fresh tenants and collections from `StoreCase`, so cases share one store (opening
one costs seconds) without seeing each other's data.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.router.clients.milvus_store import StoreSchemaMismatch, VectorStore
from services.router.ports import ChunkRecord

DIMENSION = 8


@dataclass
class StoreCase:
    """A store under test, how to open another one on the same Milvus, and fresh names."""

    store: VectorStore
    uri: str
    index_type: str
    # Most cases write here, under fresh tenants: creating a collection takes seconds on a server.
    shared: str = "contract"
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    def tenant(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}.x"

    def collection(self) -> str:
        """A collection no case has used yet (only for cases about collections themselves)."""
        return f"c_{uuid.uuid4().hex[:12]}"

    def vector(self) -> list[float]:
        return [float(v) for v in self.rng.normal(size=DIMENSION)]

    def chunks(self, document_id: str, n: int, tag: str = "v1") -> list[ChunkRecord]:
        return [
            ChunkRecord(
                document_id=document_id,
                chunk_index=i,
                text=f"{document_id} {tag} chunk {i}",
                vector=self.vector(),
                metadata={"source": f"{document_id}.txt", "version": tag, "note": "naïve ✓"},
            )
            for i in range(n)
        ]


async def _count(store: VectorStore, tenant: str, collection: str) -> int:
    return dict(await store.list_collections(tenant)).get(collection, 0)


async def _texts(store: VectorStore, tenant: str, collection: str, probe: list[float]) -> list[str]:
    return sorted(h.text for h in await store.search(tenant, collection, probe, top_k=100))


async def ingest_and_search(case: StoreCase) -> None:
    store, tenant, collection = case.store, case.tenant(), case.shared
    doc_a, doc_b = case.chunks("doc-a", 3), case.chunks("doc-b", 2)
    assert await store.replace_document(tenant, collection, "doc-a", doc_a) == 3
    assert await store.replace_document(tenant, collection, "doc-b", doc_b) == 2

    hits = await store.search(tenant, collection, doc_a[1].vector, top_k=4)
    assert len(hits) == 4
    top = hits[0]
    assert (top.document_id, top.chunk_index) == ("doc-a", 1)
    assert top.score == pytest.approx(1.0, abs=1e-4)  # cosine similarity with itself
    assert top.text == doc_a[1].text
    assert top.metadata == dict(doc_a[1].metadata)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0001 <= s <= 1.0001 for s in scores)

    # Scaling the query changes nothing under cosine; top_k bounds the answer.
    scaled = [3.0 * v for v in doc_b[0].vector]
    hits = await store.search(tenant, collection, scaled, top_k=1)
    assert [(h.document_id, h.chunk_index) for h in hits] == [("doc-b", 0)]
    assert len(await store.search(tenant, collection, scaled, top_k=50)) == 5


async def default_collection_is_ready(case: StoreCase) -> None:
    store, tenant = case.store, case.tenant()
    assert await store.list_collections(tenant) == [(store.default_collection, 0)]
    chunks = case.chunks("d", 2)
    await store.replace_document(tenant, store.default_collection, "d", chunks)
    assert await store.list_collections(tenant) == [(store.default_collection, 2)]
    hits = await store.search(tenant, store.default_collection, chunks[1].vector, top_k=1)
    assert hits[0].chunk_index == 1
    await store.delete_documents(tenant, store.default_collection, ["d"])


async def tenant_isolation(case: StoreCase) -> None:
    store, alice, bob, collection = case.store, case.tenant(), case.tenant(), case.shared
    secret = case.chunks("shared-id", 3, tag="alice")
    await store.replace_document(alice, collection, "shared-id", secret)

    # Bob asks with Alice's exact vector: nothing, in any collection.
    assert await store.search(bob, collection, secret[0].vector, top_k=10) == []
    assert await store.search(bob, store.default_collection, secret[0].vector, top_k=10) == []
    assert collection not in dict(await store.list_collections(bob))

    # Bob's document with the same id is his own: it neither replaces nor reveals Alice's.
    mine = case.chunks("shared-id", 1, tag="bob")
    await store.replace_document(bob, collection, "shared-id", mine)
    hits = await store.search(bob, collection, secret[0].vector, top_k=10)
    assert [h.text for h in hits] == [mine[0].text]
    assert await _count(store, alice, collection) == 3
    assert await _count(store, bob, collection) == 1

    # Bob deleting "shared-id" deletes his, not Alice's.
    assert await store.delete_documents(bob, collection, ["shared-id"]) == (1, 1)
    assert await _count(store, alice, collection) == 3
    hits = await store.search(alice, collection, secret[2].vector, top_k=1)
    assert (hits[0].document_id, hits[0].chunk_index, hits[0].text) == ("shared-id", 2, secret[2].text)


async def replace_with_fewer_chunks(case: StoreCase) -> None:
    store, tenant, collection = case.store, case.tenant(), case.shared
    probe = case.vector()
    await store.replace_document(tenant, collection, "doc", case.chunks("doc", 5, tag="v1"))
    await store.replace_document(tenant, collection, "other", case.chunks("other", 2))
    assert await _count(store, tenant, collection) == 7

    v2 = case.chunks("doc", 2, tag="v2")
    assert await store.replace_document(tenant, collection, "doc", v2) == 2
    assert await _count(store, tenant, collection) == 4
    texts = await _texts(store, tenant, collection, probe)
    assert [t for t in texts if t.startswith("doc ")] == sorted(c.text for c in v2)  # no v1 tail
    assert len([t for t in texts if t.startswith("other ")]) == 2

    # Longer again: all new chunks, nothing old.
    v3 = case.chunks("doc", 4, tag="v3")
    await store.replace_document(tenant, collection, "doc", v3)
    texts = await _texts(store, tenant, collection, probe)
    assert [t for t in texts if t.startswith("doc ")] == sorted(c.text for c in v3)

    # No chunks: the document is gone.
    assert await store.replace_document(tenant, collection, "doc", []) == 0
    assert await _count(store, tenant, collection) == 2


async def reingest_is_idempotent(case: StoreCase) -> None:
    store, tenant, collection = case.store, case.tenant(), case.shared
    chunks = case.chunks("doc", 3)
    for _ in range(3):
        assert await store.replace_document(tenant, collection, "doc", chunks) == 3
        assert await _count(store, tenant, collection) == 3
    hits = await store.search(tenant, collection, chunks[2].vector, top_k=10)
    assert sorted((h.document_id, h.chunk_index) for h in hits) == [("doc", 0), ("doc", 1), ("doc", 2)]


async def delete_documents(case: StoreCase) -> None:
    store, tenant, collection = case.store, case.tenant(), case.shared
    one, two, kept = case.chunks("one", 2), case.chunks("two", 3), case.chunks("kept", 1)
    for doc_id, chunks in (("one", one), ("two", two), ("kept", kept)):
        await store.replace_document(tenant, collection, doc_id, chunks)

    # Two that exist (five chunks), one that never did, a duplicate.
    assert await store.delete_documents(tenant, collection, ["one", "two", "missing", "one"]) == (2, 5)
    assert await _count(store, tenant, collection) == 1
    hits = await store.search(tenant, collection, two[1].vector, top_k=10)
    assert [h.document_id for h in hits] == ["kept"]
    assert await store.delete_documents(tenant, collection, ["one", "two"]) == (0, 0)
    assert await store.delete_documents(tenant, collection, []) == (0, 0)


async def awkward_document_ids(case: StoreCase) -> None:
    """Ids a filter expression would choke on: writes, replaces and deletes still find them."""
    store, tenant, collection = case.store, case.tenant(), case.shared
    ids = ['quote"d', "back\\slash", "new\nline", "cr\rx", "tab\tx", "ünï 😀", "' or true or '", "x" * 512]
    for doc_id in ids:
        await store.replace_document(tenant, collection, doc_id, case.chunks(doc_id, 3))
        await store.replace_document(tenant, collection, doc_id, case.chunks(doc_id, 1, tag="v2"))
    assert await _count(store, tenant, collection) == len(ids)
    hits = await store.search(tenant, collection, case.vector(), top_k=50)
    assert sorted(h.document_id for h in hits) == sorted(ids)
    assert await store.delete_documents(tenant, collection, ids) == (len(ids), len(ids))


async def list_collections_per_tenant(case: StoreCase) -> None:
    store, alice, bob = case.store, case.tenant(), case.tenant()
    default, shared = store.default_collection, case.shared
    await store.replace_document(alice, default, "a", case.chunks("a", 2))
    await store.replace_document(alice, shared, "b", case.chunks("b", 3))
    await store.replace_document(alice, shared, "c", case.chunks("c", 1))
    await store.replace_document(bob, shared, "b", case.chunks("b", 4))

    # Sorted by name; the default collection always, others only where the tenant has chunks.
    assert await store.list_collections(alice) == sorted([(default, 2), (shared, 4)])
    assert await store.list_collections(bob) == sorted([(default, 0), (shared, 4)])
    assert await store.list_collections(case.tenant()) == [(default, 0)]
    await store.delete_documents(alice, default, ["a"])
    assert await store.list_collections(alice) == sorted([(default, 0), (shared, 4)])


async def unknown_collection(case: StoreCase) -> None:
    store, tenant, collection = case.store, case.tenant(), case.collection()
    assert await store.search(tenant, collection, case.vector(), top_k=5) == []
    assert await store.delete_documents(tenant, collection, ["x"]) == (0, 0)
    assert await store.replace_document(tenant, collection, "x", []) == 0
    await store.flush(collection)
    # None of that created it.
    assert collection not in dict(await store.list_collections(tenant))
    assert await store.search(tenant, collection, case.vector(), top_k=5) == []


async def rejected_write_keeps_old_version(case: StoreCase) -> None:
    """A new version with one bad chunk is refused whole; the old version stays, every chunk."""
    store, tenant, collection = case.store, case.tenant(), case.shared
    old = case.chunks("doc", 3, tag="old")
    await store.replace_document(tenant, collection, "doc", old)

    bad_dimension = case.chunks("doc", 4, tag="new")
    bad_dimension[2] = ChunkRecord("doc", 2, "short vector", [0.5] * (DIMENSION - 1), {})
    not_finite = case.chunks("doc", 2, tag="new")
    not_finite[1] = ChunkRecord("doc", 1, "nan", [float("nan")] * DIMENSION, {})
    bad_metadata = case.chunks("doc", 2, tag="new")
    bad_metadata[0] = ChunkRecord("doc", 0, "meta", case.vector(), {"n": 1})  # type: ignore[dict-item]
    too_long = case.chunks("doc", 2, tag="new")
    too_long[1] = ChunkRecord("doc", 1, "é" * 40000, case.vector(), {})  # 80,000 bytes
    gap = [*case.chunks("doc", 2, tag="new"), ChunkRecord("doc", 3, "gap", case.vector(), {})]
    surrogate = case.chunks("doc", 2, tag="new")
    surrogate[1] = ChunkRecord("doc", 1, "lone \ud800 surrogate", case.vector(), {})
    for bad in (bad_dimension, not_finite, bad_metadata, too_long, gap, surrogate):
        with pytest.raises(InvalidArgument):
            await store.replace_document(tenant, collection, "doc", bad)
        assert await _count(store, tenant, collection) == 3
        assert await _texts(store, tenant, collection, case.vector()) == sorted(c.text for c in old)
    for i, chunk in enumerate(old):
        hits = await store.search(tenant, collection, chunk.vector, top_k=1)
        assert (hits[0].chunk_index, hits[0].text) == (i, chunk.text)


async def invalid_arguments(case: StoreCase) -> None:
    store, tenant, collection = case.store, case.tenant(), case.shared
    probe = case.vector()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.search('a" or tenant != "', collection, probe, top_k=1),
        lambda: store.search(tenant, "no-dashes", probe, top_k=1),
        lambda: store.search(tenant, collection, probe, top_k=0),
        lambda: store.search(tenant, collection, probe[:-1], top_k=1),
        lambda: store.search(tenant, collection, [0.0] * DIMENSION, top_k=1),
        lambda: store.replace_document(tenant, collection, "", case.chunks("", 1)),
        lambda: store.replace_document(tenant, collection, "a", case.chunks("b", 1)),
        lambda: store.delete_documents(tenant, collection, ["x" * 513]),
        lambda: store.list_collections(""),
    ]
    for call in calls:
        with pytest.raises(InvalidArgument):
            await call()


async def concurrent_replaces_of_one_document(case: StoreCase) -> None:
    """Replaces of one document run one at a time, in arrival order: the last one wins, whole."""
    store, tenant, collection = case.store, case.tenant(), case.shared
    versions = [case.chunks("doc", n, tag=f"v{i}") for i, n in enumerate([5, 2, 4, 1, 3])]
    await asyncio.gather(*(store.replace_document(tenant, collection, "doc", v) for v in versions))
    assert await _texts(store, tenant, collection, case.vector()) == sorted(c.text for c in versions[-1])


async def concurrent_writes_create_collection_once(case: StoreCase) -> None:
    store, tenant, collection = case.store, case.tenant(), case.collection()
    docs = {f"d{i}": case.chunks(f"d{i}", i + 1) for i in range(6)}
    stored = await asyncio.gather(
        *(store.replace_document(tenant, collection, d, c) for d, c in docs.items())
    )
    assert stored == [1, 2, 3, 4, 5, 6]
    assert await _count(store, tenant, collection) == 21


async def dimension_mismatch_on_open(case: StoreCase) -> None:
    with pytest.raises(StoreSchemaMismatch, match=rf"{DIMENSION}-dimensional vectors .* 16-dimensional"):
        await VectorStore.open(case.uri, 16, index_type=case.index_type)
    # The failed open left the store under test working.
    tenant = case.tenant()
    await case.store.replace_document(tenant, case.store.default_collection, "d", case.chunks("d", 1))
    assert await case.store.delete_documents(tenant, case.store.default_collection, ["d"]) == (1, 1)


CASES: list[Callable[[StoreCase], Awaitable[None]]] = [
    ingest_and_search,
    default_collection_is_ready,
    tenant_isolation,
    replace_with_fewer_chunks,
    reingest_is_idempotent,
    delete_documents,
    awkward_document_ids,
    list_collections_per_tenant,
    unknown_collection,
    rejected_write_keeps_old_version,
    invalid_arguments,
    concurrent_replaces_of_one_document,
    concurrent_writes_create_collection_once,
    dimension_mismatch_on_open,
]
