"""`VectorStore` on Milvus Lite (a real Lite file in tmp_path): the shared store contract, plus what
only a file-backed store has (persistence across close and reopen, one process per file)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from services.router.clients.milvus_store import VectorStore
from services.router.ports import IndexUnavailable
from tests.integration import store_contract
from tests.integration.store_contract import DIMENSION, StoreCase


@pytest.fixture(scope="module")
async def lite_store(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[VectorStore, str]]:
    """One Lite store for the module (opening one takes a second or two); cases use fresh tenants."""
    uri = str(tmp_path_factory.mktemp("lite") / "forge.db")
    store = await VectorStore.open(uri, DIMENSION)
    yield store, uri
    await store.close()


@pytest.mark.parametrize("case", store_contract.CASES, ids=lambda case: case.__name__)
async def test_contract(
    lite_store: tuple[VectorStore, str], case: Callable[[StoreCase], Awaitable[None]]
) -> None:
    store, uri = lite_store
    await case(StoreCase(store=store, uri=uri, index_type="FLAT"))


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    uri = str(tmp_path / "nested" / "dir" / "persist.db")  # parent directories are created
    store = await VectorStore.open(uri, DIMENSION)
    case = StoreCase(store=store, uri=uri, index_type="FLAT")
    tenant, collection = case.tenant(), case.collection()
    chunks = case.chunks("doc", 3)
    await store.replace_document(tenant, collection, "doc", chunks)
    await store.replace_document(tenant, collection, "gone", case.chunks("gone", 2))
    await store.delete_documents(tenant, collection, ["gone"])
    await store.close()  # stops the Lite process: the reopen below reads the file afresh

    store = await VectorStore.open(uri, DIMENSION)
    try:
        assert await store.list_collections(tenant) == sorted([("default", 0), (collection, 3)])
        hits = await store.search(tenant, collection, chunks[1].vector, top_k=5)
        assert sorted((h.document_id, h.chunk_index) for h in hits) == [("doc", 0), ("doc", 1), ("doc", 2)]
        assert (hits[0].chunk_index, hits[0].text) == (1, chunks[1].text)
    finally:
        await store.close()


async def test_file_held_by_another_process_is_unavailable(tmp_path: Path) -> None:
    uri = str(tmp_path / "held.db")
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys\n"
        "from milvus_lite.server_manager import server_manager_instance as m\n"
        "assert m.start_and_get_uri(sys.argv[1])\n"
        "print('holding', flush=True)\n"
        "sys.stdin.read()\n",
        uri,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 60) == b"holding\n"
        with pytest.raises(IndexUnavailable, match="one process"):
            await VectorStore.open(uri, DIMENSION)
    finally:
        holder.stdin.close()
        await asyncio.wait_for(holder.wait(), 30)
    # Released by the holder: this process may open it now.
    store = await VectorStore.open(uri, DIMENSION)
    await store.close()


async def test_bad_open_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="index types"):
        await VectorStore.open(str(tmp_path / "x.db"), DIMENSION, index_type="HNSW")
    with pytest.raises(ValueError, match="file name"):
        await VectorStore.open(str(tmp_path / ("x" * 40 + ".db")), DIMENSION)
    with pytest.raises(ValueError, match="dimension"):
        await VectorStore.open(str(tmp_path / "x.db"), 0)
