"""forge_client's ingest replay buffer: a failed stream is resumed by resending exactly the
documents not yet acknowledged, the caller's source read once, even while a failed attempt's
reader is still taking a document from it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from forge_client.documents import AsyncOutbox, Outbox, document_from_file, documents_from_files, find_files
from forge_client.types import Document


def docs(n: int) -> Iterator[Document]:
    """A one-shot source: a generator can be read once only."""
    return (Document(f"d{i}", f"text {i}") for i in range(n))


def ids(documents: list[Document]) -> list[str]:
    return [d.id for d in documents]


def test_a_new_attempt_resends_the_unacknowledged_then_reads_on() -> None:
    outbox = Outbox(docs(5))
    first = outbox.attempt()
    sent = [next(first), next(first), next(first)]
    assert ids(sent) == ["d0", "d1", "d2"]
    assert outbox.ack() == sent[0]  # d0 durable; the stream then fails
    assert ids(list(outbox.attempt())) == ["d1", "d2", "d3", "d4"]
    assert outbox.acked == 1 and outbox.error is None


def test_acknowledgements_during_an_attempt_keep_its_place() -> None:
    outbox = Outbox(docs(4))
    attempt = outbox.attempt()
    assert next(attempt).id == "d0"
    outbox.ack()
    assert next(attempt).id == "d1"
    outbox.ack()
    assert ids(list(attempt)) == ["d2", "d3"]


def test_a_document_a_failed_attempt_took_late_goes_out_with_the_next() -> None:
    # Sync gRPC reads requests on its own thread: a failed attempt's reader may take a document
    # from the source after the next attempt has begun. It must be sent by the new attempt.
    outbox = Outbox(docs(3))
    old, new = outbox.attempt(), outbox.attempt()
    assert next(old).id == "d0"
    assert next(new).id == "d0"
    assert next(old).id == "d1"  # taken late by the dead attempt
    assert ids(list(new)) == ["d1", "d2"]


def test_a_source_error_ends_the_requests_and_is_kept() -> None:
    def broken() -> Iterator[Document]:
        yield Document("ok", "fine")
        raise ValueError("notes.md: cannot read as UTF-8 text")

    outbox = Outbox(broken())
    assert ids(list(outbox.attempt())) == ["ok"]
    assert isinstance(outbox.error, ValueError)
    assert ids(list(outbox.attempt())) == ["ok"]  # unacknowledged, resent; the source is not read again


async def test_the_async_outbox_takes_async_and_plain_sources() -> None:
    async def source() -> AsyncIterator[Document]:
        for d in docs(3):
            yield d

    for outbox in (AsyncOutbox(source()), AsyncOutbox(docs(3))):
        attempt = outbox.attempt()
        assert (await anext(attempt)).id == "d0"
        assert (await anext(attempt)).id == "d1"
        outbox.ack()
        assert [d.id async for d in outbox.attempt()] == ["d1", "d2"]


def test_files_and_folders_become_documents(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.md").write_text("# B")
    (tmp_path / "sub" / "a.txt").write_text("A")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    single = tmp_path / "single.log"
    single.write_text("named files are taken whatever their suffix")
    files = find_files([tmp_path, single])
    assert [f.name for f in files] == ["b.md", "a.txt", "single.log"]
    b, a, log = documents_from_files(files)
    assert (b.id, b.text, b.metadata) == (
        "b.md",
        "# B",
        {"source": str(tmp_path / "b.md"), "content_type": "text/markdown"},
    )
    assert a.metadata["content_type"] == log.metadata["content_type"] == "text/plain"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.md: no such file or folder"):
        find_files([tmp_path / "nowhere.md"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="cannot read as UTF-8"):
        document_from_file(tmp_path / "latin1.txt")


async def test_a_cancelled_attempt_leaves_its_pull_to_the_next() -> None:
    # A failed attempt's writer is cancelled, maybe while it waits for the caller's iterator: the
    # iterator must not be interrupted, and the document it yields goes out with the next attempt.
    started, gate = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[Document]:
        started.set()
        await gate.wait()
        yield Document("d0", "late")
        yield Document("d1", "next")

    outbox = AsyncOutbox(slow())
    first = asyncio.ensure_future(anext(outbox.attempt()))
    await started.wait()
    first.cancel()
    gate.set()
    assert [d.id async for d in outbox.attempt()] == ["d0", "d1"]
    assert first.cancelled() and outbox.error is None
