"""Documents from files, and the replay buffer that lets an ingest resume where it failed."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from pathlib import Path

from forge_client.types import Document

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")
_MARKDOWN = (".md", ".markdown")


def find_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files named, and the text/Markdown/reST files under folders named (sorted, so runs are
    repeatable). A path that does not exist raises FileNotFoundError before anything is sent."""
    found: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found.extend(
                sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def document_from_file(path: Path) -> Document:
    """One document per file: id = the file name, metadata source (the path) and content_type
    (Markdown is chunked along its headings)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read as UTF-8 text: {exc}") from exc
    content_type = "text/markdown" if path.suffix.lower() in _MARKDOWN else "text/plain"
    return Document(path.name, text, {"source": str(path), "content_type": content_type})


def documents_from_files(files: Sequence[Path]) -> Iterator[Document]:
    """Read lazily: a large folder is never all in memory."""
    return (document_from_file(f) for f in files)


class Outbox:
    """The documents of one ingest call that were taken from the caller's source but not yet
    acknowledged. The router acknowledges documents in the order sent, each once it is durable,
    so after a failed stream the next attempt sends exactly these again (ingesting an id again
    replaces the whole document, so a document stored without its acknowledgement arriving is
    harmless to resend) and then goes on with the source. The source is read once, so a one-shot
    iterator works too. Thread-safe: sync gRPC reads requests on its own thread, and the thread of
    a failed attempt may still be taking a document from the source when the next one starts."""

    def __init__(self, source: Iterable[Document]) -> None:
        self._source = iter(source)
        self._pending: deque[Document] = deque()
        self._acked = 0  # documents acknowledged so far: the sequence number of _pending[0]
        self._lock = threading.Lock()
        self.error: BaseException | None = None  # what the source raised, re-raised by the client

    @property
    def acked(self) -> int:
        return self._acked

    def attempt(self) -> Iterator[Document]:
        """The documents for one attempt: the unacknowledged ones, then the rest of the source.
        An error raised by the source ends the attempt's requests and is kept in `error`."""
        seq = self._acked
        while True:
            with self._lock:
                index = seq - self._acked
                if index < 0:  # acknowledged meanwhile (cannot happen in order, but be safe)
                    seq, index = self._acked, 0
                if index < len(self._pending):
                    doc = self._pending[index]
                elif self.error is not None:
                    return
                else:
                    try:
                        doc = next(self._source)
                    except StopIteration:
                        return
                    except Exception as exc:  # the caller's iterator or a file that cannot be read
                        self.error = exc
                        return
                    self._pending.append(doc)
            seq += 1
            yield doc

    def ack(self) -> Document | None:
        """The router stored the oldest pending document; returns it."""
        with self._lock:
            if not self._pending:
                return None
            self._acked += 1
            return self._pending.popleft()


class AsyncOutbox:
    """`Outbox` for asyncio: the source may be an async iterable, or a plain one (read on a worker
    thread, so reading files does not stall the event loop). Each document is taken from the
    source by a task of its own that the attempt awaits shielded: cancelling a failed attempt's
    writer never interrupts the caller's iterator, and the next attempt awaits the same pull."""

    def __init__(self, source: Iterable[Document] | AsyncIterable[Document]) -> None:
        self._async = aiter(source) if isinstance(source, AsyncIterable) else None
        self._sync = None if isinstance(source, AsyncIterable) else iter(source)
        self._pending: deque[Document] = deque()
        self._acked = 0
        self._pulling: asyncio.Future[None] | None = None
        self._exhausted = False
        self.error: BaseException | None = None

    @property
    def acked(self) -> int:
        return self._acked

    async def _pull(self) -> None:
        try:
            if self._async is not None:
                doc: Document | None = await anext(self._async)
            else:
                assert self._sync is not None
                # next() with a default: a StopIteration cannot cross into a Future.
                doc = await asyncio.to_thread(next, self._sync, None)
            if doc is None:
                raise StopAsyncIteration
        except StopAsyncIteration:
            self._exhausted = True
        except Exception as exc:  # the caller's iterator or a file that cannot be read
            self.error = exc
        else:
            self._pending.append(doc)
        finally:
            self._pulling = None

    async def attempt(self) -> AsyncIterator[Document]:
        seq = self._acked
        while True:
            index = max(0, seq - self._acked)
            seq = self._acked + index
            if index < len(self._pending):
                seq += 1
                yield self._pending[index]
            elif self.error is not None or self._exhausted:
                return
            else:
                if self._pulling is None:
                    self._pulling = asyncio.ensure_future(self._pull())
                await asyncio.shield(self._pulling)

    def ack(self) -> Document | None:
        if not self._pending:
            return None
        self._acked += 1
        return self._pending.popleft()

    def close(self) -> None:
        """The call is over: a pull still running is not wanted."""
        if self._pulling is not None:
            self._pulling.cancel()
