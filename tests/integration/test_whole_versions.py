"""Whole versions and durability of `VectorStore` (issue 13), on a real Milvus Lite file and a real
Milvus server (2.3.5, with its flush rate limited as Milvus >= 2.3.9 does by default).

- A write SIGKILLed at each step (the writing process, and on Lite the Lite process too) leaves the
  document entirely old or entirely new, exact texts and count; a later write or open removes the
  leftovers.
- A reader running during many re-ingests never sees a mix.
- Acknowledged writes survive SIGKILL of the process holding Milvus Lite, and of the Milvus server
  (restarted on the same data), without any flush.
- Two writes to one collection within 10 s succeed on a server that allows one flush per 10 s.
- A collection written in the pre-version layout keeps working and is migrated on open.

The writes to kill run in a child process (`python -m tests.integration.test_whole_versions ...`,
see `_child`) that stops at the named step through the store's `pause_at` seam, says so on stdout
and waits there until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from pymilvus import DataType, MilvusClient

from services.router.clients import milvus_store
from services.router.clients.milvus_store import VectorStore
from services.router.ports import ChunkRecord, IndexTimeout, IndexUnavailable
from tests.integration.milvus_server import (
    MilvusServer,
    ServerVenvUnavailable,
    ensure_server_venv,
    start_server,
)

DIMENSION = 8
COLLECTION = "versions"
OLD, NEW = 5, 3  # chunk counts: the new version is shorter (the old design's stale tail)
# Milvus >= 2.3.9 allows 0.1 flushes/s per collection by default; 2.3.5 can limit flushes globally.
FLUSH_LIMIT = ("quotaAndLimits.flushRate.enabled=true", "quotaAndLimits.flushRate.max=0.1")
EVENT = "whole-versions-event "  # marks the child's own lines on stdout
STEPS_OLD = ("before-insert", "inserted")  # killed here: the old version stands
STEPS_NEW = ("committed", "collected")  # killed here: the new version stands


def chunks(doc: str, n: int, tag: str) -> list[ChunkRecord]:
    """Version `tag` of a document: texts name the version, vectors are fixed by (doc, tag, i)."""
    records = []
    for i in range(n):
        seed = int(hashlib.sha1(f"{doc}|{tag}|{i}".encode()).hexdigest()[:12], 16)
        rng = np.random.default_rng(seed)
        vector = [float(v) for v in rng.normal(size=DIMENSION)]
        records.append(ChunkRecord(doc, i, f"{doc} {tag} chunk {i}", vector, {"version": tag}))
    return records


def texts(doc: str, n: int, tag: str) -> list[str]:
    return sorted(c.text for c in chunks(doc, n, tag))


# --- the child process ----------------------------------------------------------------------------


async def _child(args: list[str]) -> None:
    """`write URI TENANT DOC STEP`: write version "old" whole, then version "new" stopping at STEP.
    `delete URI TENANT DOC STEP`: write "old" whole, then delete it stopping at STEP.
    `ack URI TENANT N STEP`: write N documents, printing each acknowledgement, then re-write doc-0
    as "new" stopping at STEP. At the step it prints {"step": STEP} and waits to be killed."""
    mode, uri, tenant, what, step = args
    store = await VectorStore.open(uri, DIMENSION, index_type="FLAT" if uri.endswith(".db") else "HNSW")
    stop = asyncio.Event()

    async def pause(at: str) -> None:
        if at == step:
            print(EVENT + json.dumps({"step": at}), flush=True)
            await stop.wait()  # never set: the parent kills this process here

    if mode == "ack":
        for i in range(int(what)):
            doc = f"doc-{i}"
            await store.replace_document(tenant, COLLECTION, doc, chunks(doc, OLD, "old"))
            print(EVENT + json.dumps({"ack": doc}), flush=True)
        what = "doc-0"
    else:
        await store.replace_document(tenant, COLLECTION, what, chunks(what, OLD, "old"))
    store.pause_at = pause
    if mode == "delete":
        await store.delete_documents(tenant, COLLECTION, [what])
    else:
        await store.replace_document(tenant, COLLECTION, what, chunks(what, NEW, "new"))
    print(EVENT + json.dumps({"step": "done"}), flush=True)
    await stop.wait()


@dataclass
class Child:
    process: subprocess.Popen[str]
    acks: list[str]

    def lite_processes(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.process.pid).children(recursive=True) if p.name() == "milvus"]

    def kill(self, *also: psutil.Process) -> None:
        """SIGKILL the child (and `also`), then wait for all of them to be gone."""
        lite = self.lite_processes()
        for process in also:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        # A Lite process left alive stops by itself once its file's lock is free (within ~2 s).
        _, alive = psutil.wait_procs([*also, *lite], timeout=30)
        assert not alive, f"still running: {alive}"


def run_child(*args: str) -> Child:
    """Start the child and read until it stops at its step; fail if it ends instead."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.test_whole_versions", *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert process.stdout is not None
    acks: list[str] = []
    for line in process.stdout:
        if not line.startswith(EVENT):
            continue  # the Lite process shares this stdout
        event = json.loads(line.removeprefix(EVENT))
        if "ack" in event:
            acks.append(event["ack"])
        elif event["step"] == args[-1]:
            return Child(process, acks)
    process.wait(30)
    raise AssertionError(f"child exited with {process.returncode} before step {args[-1]}")


# --- backends ------------------------------------------------------------------------------------


@dataclass
class Backend:
    kind: str  # "lite" or "server"
    uri: str
    server: MilvusServer | None = None

    @property
    def index_type(self) -> str:
        return "FLAT" if self.kind == "lite" else "HNSW"

    async def open(self, **options: Any) -> VectorStore:
        return await VectorStore.open(self.uri, DIMENSION, index_type=self.index_type, **options)


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    try:
        executable = ensure_server_venv()
    except ServerVenvUnavailable as e:
        pytest.skip(f"no Milvus server to test against: {e}")
    server = start_server(executable, tmp_path_factory.mktemp("milvus-server"), extra_config=FLUSH_LIMIT)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["lite", pytest.param("server", marks=[pytest.mark.milvus_server, pytest.mark.slow])])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "lite":
        return Backend("lite", str(tmp_path / "forge.db"))
    server: MilvusServer = request.getfixturevalue("milvus_server")
    return Backend("server", server.uri, server)


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


async def chunk_rows(store: VectorStore, tenant_: str, doc: str) -> list[str]:
    """The pks of every chunk row of the document, visible or not (what garbage collection sees)."""
    name = milvus_store._milvus_name(COLLECTION)
    key = milvus_store._doc_key(tenant_, COLLECTION, doc)
    budget = store._budget(None)
    await store._ensure(name, budget, create=False)  # attaching a collection sweeps it (one writer)
    rows = await store._query(name, f'doc_key == "{key}" and chunk_index >= 0', ["pk"], budget)
    return sorted(str(r["pk"]) for r in rows)


async def visible(store: VectorStore, tenant_: str, doc: str) -> tuple[int, list[str]]:
    """(the chunk count listed, the texts search finds) of the document."""
    count = dict(await store.list_collections(tenant_)).get(COLLECTION, 0)
    probe = chunks(doc, 1, "probe")[0].vector
    hits = await store.search(tenant_, COLLECTION, probe, top_k=100)
    return count, sorted(h.text for h in hits if h.document_id == doc)


# --- (a) kills at each step of a write ------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS_OLD + STEPS_NEW)
@pytest.mark.parametrize("victims", ["writer", "writer+lite"])
async def test_a_write_killed_at_any_step_leaves_one_whole_version(
    backend: Backend, step: str, victims: str
) -> None:
    if backend.kind == "server" and victims == "writer+lite":
        pytest.skip("no Lite process with a server (the server's own kill: test_acknowledged_*)")
    t, doc = tenant(), "doc"
    child = run_child("write", backend.uri, t, doc, step)
    child.kill(*(child.lite_processes() if victims == "writer+lite" else []))

    old, new = texts(doc, OLD, "old"), texts(doc, NEW, "new")
    expected = (OLD, old) if step in STEPS_OLD else (NEW, new)
    # The only writer (a Lite file; a server store told so) removes every leftover.
    store = await backend.open(writer_grace_s=0)
    try:
        assert await visible(store, t, doc) == expected
        # Opening a store that is the only writer swept the leftovers already.
        assert len(await chunk_rows(store, t, doc)) == expected[0]
        await store.replace_document(t, COLLECTION, doc, chunks(doc, 2, "later"))
        assert await visible(store, t, doc) == (2, texts(doc, 2, "later"))
        assert len(await chunk_rows(store, t, doc)) == 2, "the later write removed every leftover"
    finally:
        await store.close()


@pytest.mark.parametrize("victims", ["writer", "writer+lite"])
async def test_a_delete_killed_after_its_commit_leaves_nothing_visible(
    backend: Backend, victims: str
) -> None:
    if backend.kind == "server" and victims == "writer+lite":
        pytest.skip("no Lite process with a server")
    t, doc = tenant(), "doc"
    child = run_child("delete", backend.uri, t, doc, "uncommitted")
    child.kill(*(child.lite_processes() if victims == "writer+lite" else []))
    store = await backend.open()  # on a server: other writers may exist (the default)
    try:
        assert await visible(store, t, doc) == (0, [])
        if backend.kind == "server":
            assert len(await chunk_rows(store, t, doc)) == OLD, "young leftovers stay, unseen"
            assert await store.sweep(COLLECTION) == 0
        else:
            assert await chunk_rows(store, t, doc) == [], "opening the file swept them"
    finally:
        await store.close()
    sole = await backend.open(writer_grace_s=0)  # the only writer: sweeps on open
    try:
        assert await chunk_rows(sole, t, doc) == []
    finally:
        await sole.close()


async def test_a_server_store_with_other_writers_keeps_their_young_rows(backend: Backend) -> None:
    """With the default grace, a write removes the version it replaced but not another writer's
    uncommitted rows (they may be in flight); they stay invisible, and a sole writer removes them."""
    if backend.kind == "lite":
        pytest.skip("a Lite file has one writer")
    t, doc = tenant(), "doc"
    run_child("write", backend.uri, t, doc, "inserted").kill()
    store = await backend.open()  # default grace: other routers may be writing
    try:
        await store.replace_document(t, COLLECTION, doc, chunks(doc, 2, "later"))
        assert await visible(store, t, doc) == (2, texts(doc, 2, "later"))
        assert len(await chunk_rows(store, t, doc)) == 2 + NEW, "the killed write's rows stay, unseen"
        assert await store.sweep(COLLECTION) == 0, "too young for a store that is not the only writer"
    finally:
        await store.close()
    sole = await backend.open(writer_grace_s=0)  # sweeps on open
    try:
        assert len(await chunk_rows(sole, t, doc)) == 2
    finally:
        await sole.close()


@pytest.mark.milvus_server
@pytest.mark.slow
async def test_a_write_that_waited_behind_another_routers_commit_takes_a_higher_version(
    milvus_server: MilvusServer,
) -> None:
    """Router A's second write takes its version, then waits for A's lock on the document while
    router B commits a later version. When it goes on, it replaces B's version: it must commit a
    version above B's (else it deletes the higher one and leaves a lower one, which readers of
    the higher version would see flip back)."""
    backend = Backend("server", milvus_server.uri, milvus_server)
    t, doc = tenant(), "doc"
    a, b = await backend.open(), await backend.open()
    try:
        await a.replace_document(t, COLLECTION, doc, chunks(doc, 2, "first"))
        at_inserted, go_on = asyncio.Event(), asyncio.Event()

        async def hold_after_insert(step: str) -> None:
            if step == "inserted" and not at_inserted.is_set():
                at_inserted.set()
                await go_on.wait()

        a.pause_at = hold_after_insert
        holding = asyncio.create_task(a.replace_document(t, COLLECTION, doc, chunks(doc, 2, "a0")))
        await at_inserted.wait()  # a0 holds A's lock on the document
        waiting = asyncio.create_task(a.replace_document(t, COLLECTION, doc, chunks(doc, 3, "a1")))
        await asyncio.sleep(0)  # a1 takes its version and queues for the lock
        assert not waiting.done()
        await b.replace_document(t, COLLECTION, doc, chunks(doc, 4, "b"))
        name, key = milvus_store._milvus_name(COLLECTION), milvus_store._doc_key(t, COLLECTION, doc)
        b_version = (await b._commits(name, t, [key], b._budget(None)))[key].version
        go_on.set()
        await asyncio.gather(holding, waiting)
        final = (await b._commits(name, t, [key], b._budget(None)))[key]
        assert final.version > b_version, "a lower version replaced a higher one"
        assert await visible(b, t, doc) == (3, texts(doc, 3, "a1"))
    finally:
        await a.close()
        await b.close()


# --- (b) a reader during many re-ingests ---------------------------------------------------------


async def test_a_concurrent_reader_never_sees_a_mix(backend: Backend) -> None:
    t, doc = tenant(), "doc"
    writer = await backend.open()
    reader = await backend.open()
    versions = [(f"v{i}", 1 + (i * 5) % 7) for i in range(30)]  # lengths 1..7, shrinking and growing
    expected = {tag: texts(doc, n, tag) for tag, n in versions}
    seen: list[str] = []
    try:
        await writer.replace_document(t, COLLECTION, doc, chunks(doc, versions[0][1], versions[0][0]))
        done = asyncio.Event()

        async def write() -> None:
            try:
                for tag, n in versions[1:]:
                    await writer.replace_document(t, COLLECTION, doc, chunks(doc, n, tag))
            finally:
                done.set()

        async def read() -> None:
            while not done.is_set():
                count, found = await visible(reader, t, doc)
                assert count in {n for _, n in versions}
                tags = {text.split()[1] for text in found}
                # A search racing commits of this document may miss it (4 rounds in a row):
                # never a mix, never a part.
                assert len(tags) <= 1, f"a mix of versions: {found}"
                if tags:
                    (tag,) = tags
                    assert found == expected[tag], f"version {tag} not whole: {found}"
                seen.append(tags.pop() if tags else "")

        await asyncio.gather(write(), read(), read())
    finally:
        await writer.close()
        await reader.close()
    assert len(set(seen) - {""}) > 3, f"the readers saw too few versions to prove anything: {set(seen)}"
    # Misses are the known limit of reading without a snapshot (docs/operations.md): a search that
    # raced a commit in each of its 4 rounds. Seen 0-3 in 20 on the server, back-to-back writes,
    # and 6 in 18 in a loaded CI run (a quarter was too tight a bound): misses must stay the minority.
    assert seen.count("") <= len(seen) // 2, f"missed the document in {seen.count('')} of {len(seen)}"


# --- (c) durability without a flush --------------------------------------------------------------


async def test_acknowledged_writes_survive_sigkill_of_the_lite_process(tmp_path: Path) -> None:
    uri, t = str(tmp_path / "forge.db"), tenant()
    child = run_child("ack", uri, t, "20", "committed")
    assert child.acks == [f"doc-{i}" for i in range(20)]
    child.kill(*child.lite_processes())  # no flush, no close: both processes die at once
    store = await VectorStore.open(uri, DIMENSION)
    try:
        assert dict(await store.list_collections(t))[COLLECTION] == NEW + 19 * OLD
        for doc in child.acks[1:]:
            assert (await visible(store, t, doc))[1] == texts(doc, OLD, "old")
        assert (await visible(store, t, "doc-0"))[1] == texts("doc-0", NEW, "new")
    finally:
        await store.close()


@pytest.mark.milvus_server
@pytest.mark.slow
async def test_acknowledged_writes_survive_sigkill_of_the_server(milvus_server: MilvusServer) -> None:
    t = tenant()
    child = run_child("ack", milvus_server.uri, t, "20", "committed")
    assert len(child.acks) == 20
    # The whole server (wrapper and milvus), then the writer: nothing was flushed.
    wrapper = psutil.Process(milvus_server.wrapper.pid)
    servers = [wrapper, *wrapper.children(recursive=True)]
    child.kill(*servers)
    milvus_server.wrapper.wait(30)
    restarted = start_server(ensure_server_venv(), milvus_server.base_dir, extra_config=FLUSH_LIMIT)
    # Later tests in this module use the restarted server.
    milvus_server.wrapper, milvus_server.uri = restarted.wrapper, restarted.uri
    milvus_server.children = restarted.children
    store = await VectorStore.open(milvus_server.uri, DIMENSION, index_type="HNSW")
    try:
        assert dict(await store.list_collections(t))[COLLECTION] == NEW + 19 * OLD
        for doc in child.acks[1:]:
            assert (await visible(store, t, doc))[1] == texts(doc, OLD, "old")
        assert (await visible(store, t, "doc-0"))[1] == texts("doc-0", NEW, "new")
    finally:
        await store.close()


# --- (d) no flush per write ----------------------------------------------------------------------


@pytest.mark.milvus_server
@pytest.mark.slow
async def test_writes_within_the_flush_limit_succeed(milvus_server: MilvusServer) -> None:
    store = await VectorStore.open(milvus_server.uri, DIMENSION, index_type="HNSW")
    t = tenant()
    try:
        await store.replace_document(t, COLLECTION, "first", chunks("first", 1, "x"))
        # The limit is real: two flushes within a few seconds cannot both go through.
        with pytest.raises((IndexUnavailable, IndexTimeout)):
            await store.flush(COLLECTION, timeout_s=3)
            await store.flush(COLLECTION, timeout_s=3)
        started = time.monotonic()
        for i in range(3):  # three ingests into the collection, well within 10 s
            assert await store.replace_document(t, COLLECTION, f"d{i}", chunks(f"d{i}", 2, "x")) == 2
        assert time.monotonic() - started < 10
        assert dict(await store.list_collections(t))[COLLECTION] == 7
    finally:
        await store.close()


# --- legacy layout -------------------------------------------------------------------------------


def write_legacy(uri: str, t: str) -> None:
    """Documents "a" (3 chunks) and "b" (2) the way the store wrote them before versions."""
    client = MilvusClient(uri)
    name = milvus_store._milvus_name(COLLECTION)
    if not client.has_collection(name):
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=40)
        schema.add_field("doc_key", DataType.VARCHAR, max_length=40)
        schema.add_field("tenant", DataType.VARCHAR, max_length=128)
        schema.add_field("document_id", DataType.VARCHAR, max_length=512)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=DIMENSION)
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    rows = [
        {
            "pk": milvus_store._hash(t, COLLECTION, c.document_id, c.chunk_index),
            "doc_key": milvus_store._doc_key(t, COLLECTION, c.document_id),
            "tenant": t,
            "document_id": c.document_id,
            "chunk_index": c.chunk_index,
            "text": c.text,
            "metadata": dict(c.metadata),
            "vector": list(c.vector),
        }
        for c in [*chunks("a", 3, "legacy"), *chunks("b", 2, "legacy")]
    ]
    client.upsert(name, rows)
    client.close()


async def test_a_legacy_collection_is_migrated_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, t = str((tmp_path / "legacy.db").resolve()), tenant()
    write_legacy(uri, t)
    manager = importlib.import_module("milvus_lite.server_manager").server_manager_instance
    manager.release_server(uri)  # frees the file for the store
    monkeypatch.setattr(milvus_store, "_PAGE", 2)  # scans page through the rows
    await check_legacy(uri, t)


@pytest.mark.milvus_server
@pytest.mark.slow
async def test_a_legacy_server_collection_is_migrated_on_open(
    milvus_server: MilvusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "COLLECTION", f"legacy_{uuid.uuid4().hex[:8]}")
    t = tenant()
    write_legacy(milvus_server.uri, t)
    monkeypatch.setattr(milvus_store, "_PAGE", 2)
    await check_legacy(milvus_server.uri, t, "HNSW")


async def check_legacy(uri: str, t: str, index_type: str = "FLAT") -> None:
    store = await VectorStore.open(uri, DIMENSION, index_type=index_type)
    try:
        assert await visible(store, t, "a") == (5, texts("a", 3, "legacy"))
        assert (await visible(store, t, "b"))[1] == texts("b", 2, "legacy")
        await store.replace_document(t, COLLECTION, "a", chunks("a", 1, "new"))
        assert await visible(store, t, "a") == (3, texts("a", 1, "new"))
        assert len(await chunk_rows(store, t, "a")) == 1, "the legacy rows went with the new version"
    finally:
        await store.close()
    store = await VectorStore.open(uri, DIMENSION, index_type=index_type)  # migrated once: same again
    try:
        assert await visible(store, t, "b") == (3, texts("b", 2, "legacy"))
        assert await store.delete_documents(t, COLLECTION, ["b", "a"]) == (2, 3)
        assert await visible(store, t, "b") == (0, [])
        assert await chunk_rows(store, t, "b") == []
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1:]))
