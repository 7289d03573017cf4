"""Ingestion and document management on their own, with stand-ins for the embed service and the
vector index (the real ones are exercised in tests/integration/test_router.py): what is checked
before anything is written, what one write holds, and what a failing dependency leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from services.common.errors import DeadlineExceeded, InvalidArgument, Unavailable
from services.router.chunking import Chunker, ChunkingConfig
from services.router.deadline import Deadline
from services.router.documents import Documents
from services.router.ingest import DocumentInput, Ingestor
from services.router.ports import IndexTimeout, IndexUnavailable
from services.router.settings import RouterSettings
from tests.unit.fake_index import FakeIndex


@dataclass
class FakeEmbeddings:
    down: bool = False
    batches: list[int] = field(default_factory=list)

    async def embed(self, texts: Sequence[str], query: bool, timeout_s: float) -> list[list[float]]:
        if self.down:
            raise Unavailable("embed", "connection refused")
        self.batches.append(len(texts))
        return [[float(len(t)), 1.0] for t in texts]


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(ChunkingConfig(max_tokens=32, overlap_tokens=4))


LONG_TEXT = "\n\n".join(
    f"## Part {n}\n\nThe {n}th paragraph says the valve number {n} opens at {n * 10} bar. " * 2
    for n in range(1, 9)
)


def ingestor(chunker: Chunker, embeddings: FakeEmbeddings, index: FakeIndex, **settings: object) -> Ingestor:
    return Ingestor(RouterSettings.model_validate(settings), chunker, embeddings, index)


async def test_a_document_is_chunked_embedded_in_batches_and_written_once(chunker: Chunker) -> None:
    embeddings, index = FakeEmbeddings(), FakeIndex()
    stored = await ingestor(chunker, embeddings, index, embed_batch_size=4).ingest(
        "acme", "", DocumentInput("guide.md", LONG_TEXT, {"source": "wiki"}), Deadline(None)
    )
    records = index.documents[("acme", "default", "guide.md")]
    assert stored.chunk_count == len(records) > 4
    assert [r.chunk_index for r in records] == list(range(len(records)))
    assert all(b <= 4 for b in embeddings.batches) and sum(embeddings.batches) == len(records)
    assert all(r.vector == [float(len(r.text)), 1.0] for r in records), "each chunk keeps its own vector"
    assert all(r.metadata == {"source": "wiki"} for r in records)
    assert index.timeouts == [RouterSettings().call_timeout_s], "no caller deadline: the configured bound"


async def test_each_write_gets_what_is_left_of_the_callers_deadline(chunker: Chunker) -> None:
    index = FakeIndex()
    await ingestor(chunker, FakeEmbeddings(), index).ingest(
        "acme", "", DocumentInput("a.txt", "Short text.", {}), Deadline(2.0)
    )
    assert 0 < index.timeouts[0] < 2.0


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (DocumentInput("", "text", {}), "document.id"),
        (DocumentInput("a\nb", "text", {}), "document.id"),
        (DocumentInput("x" * 300, "text", {}), "document.id"),
        (DocumentInput("a", " \n ", {}), "document.text"),
        (DocumentInput("a", "x" * 101, {}), "document.text"),
        (DocumentInput("a", "text", {str(i): "v" for i in range(40)}), "document.metadata"),
    ],
)
async def test_bad_documents_are_refused_before_any_call(
    chunker: Chunker, document: DocumentInput, field: str
) -> None:
    embeddings, index = FakeEmbeddings(), FakeIndex()
    with pytest.raises(InvalidArgument) as err:
        await ingestor(chunker, embeddings, index, max_document_chars=100).ingest(
            "acme", "", document, Deadline(None)
        )
    assert err.value.field == field
    assert embeddings.batches == [] and index.timeouts == []


async def test_a_failed_dependency_writes_nothing_and_keeps_its_own_error(chunker: Chunker) -> None:
    index = FakeIndex()
    doc = DocumentInput("a.txt", LONG_TEXT, {})
    with pytest.raises(Unavailable, match=r"^embed unavailable: connection refused$"):
        await ingestor(chunker, FakeEmbeddings(down=True), index).ingest("acme", "", doc, Deadline(None))
    assert index.documents == {}
    index.failure = IndexUnavailable("upsert failed")
    with pytest.raises(IndexUnavailable, match=r"^milvus unavailable: upsert failed$"):
        await ingestor(chunker, FakeEmbeddings(), index).ingest("acme", "", doc, Deadline(None))
    index.failure = IndexTimeout("no answer within 0.5s")
    with pytest.raises(DeadlineExceeded, match=r"^milvus: no answer within 0\.5s$"):
        await ingestor(chunker, FakeEmbeddings(), index).ingest("acme", "", doc, Deadline(None))


async def test_a_stream_acknowledges_each_write_and_ends_without_a_flush(chunker: Chunker) -> None:
    """Writes are durable when the index returns (servers rate-limit flushes: none per stream)."""
    index = FakeIndex()
    with ingestor(chunker, FakeEmbeddings(), index).stream("acme", Deadline(None)) as stream:
        for collection in ("a", "b"):
            await stream.ingest(collection, DocumentInput("d", "Some text.", {}))
    # Per new collection: one look at the tenant's collections, one write; nothing after.
    assert len(index.timeouts) == 4 and set(index.documents) == {("acme", c, "d") for c in "ab"}


async def test_documents_are_deleted_and_listed_per_tenant(chunker: Chunker) -> None:
    index = FakeIndex()
    ing = ingestor(chunker, FakeEmbeddings(), index)
    await asyncio.gather(
        *(
            ing.ingest(t, "", DocumentInput(d, "Some text.", {}), Deadline(None))
            for t, d in [("acme", "a"), ("acme", "b"), ("other", "a")]
        )
    )
    documents = Documents(RouterSettings(), index)
    assert await documents.delete("acme", "", ["a", "zzz"], Deadline(5)) == (1, 1)
    assert ("other", "default", "a") in index.documents, "another tenant's document of the same id stays"
    assert await documents.collections("acme", Deadline(None)) == [("default", 0)]


@pytest.mark.parametrize(
    ("ids", "collection", "field"),
    [([], "", "document_ids"), (["ok", " "], "", "document_ids[1]"), (["ok"], "no-dashes", "collection")],
)
async def test_bad_delete_requests_name_the_field(ids: list[str], collection: str, field: str) -> None:
    index = FakeIndex()
    with pytest.raises(InvalidArgument) as err:
        await Documents(RouterSettings(), index).delete("acme", collection, ids, Deadline(None))
    assert err.value.field == field and index.timeouts == []
