"""`VectorStore` on a real Milvus server (2.3.5, from PyPI's `milvus` wheel, in its own venv): the
same store contract as on Milvus Lite, with an HNSW index. Builds the venv on first use (about ten
seconds, needs the package index) and starts one server for the module (about ten seconds)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from services.router.clients.milvus_store import VectorStore
from services.router.ports import IndexUnavailable
from tests.integration import store_contract
from tests.integration.milvus_server import (
    MilvusServer,
    ServerVenvUnavailable,
    ensure_server_venv,
    start_server,
)
from tests.integration.store_contract import DIMENSION, StoreCase

pytestmark = [pytest.mark.milvus_server, pytest.mark.slow]

INDEX_TYPE = "HNSW"


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    try:
        executable = ensure_server_venv()
    except ServerVenvUnavailable as e:
        pytest.skip(f"no Milvus server to test against: {e}")
    server = start_server(executable, tmp_path_factory.mktemp("milvus-server"))
    try:
        yield server
    finally:
        server.stop()
        assert all(not p.is_running() for p in server.children), "a Milvus process outlived the test"


@pytest.fixture(scope="module")
async def server_store(milvus_server: MilvusServer) -> AsyncIterator[VectorStore]:
    store = await VectorStore.open(milvus_server.uri, DIMENSION, index_type=INDEX_TYPE)
    yield store
    await store.close()


@pytest.mark.parametrize("case", store_contract.CASES, ids=lambda case: case.__name__)
async def test_contract(
    milvus_server: MilvusServer, server_store: VectorStore, case: Callable[[StoreCase], Awaitable[None]]
) -> None:
    await case(StoreCase(store=server_store, uri=milvus_server.uri, index_type=INDEX_TYPE))


async def test_reopen_sees_the_data(milvus_server: MilvusServer, server_store: VectorStore) -> None:
    case = StoreCase(store=server_store, uri=milvus_server.uri, index_type=INDEX_TYPE)
    tenant, collection = case.tenant(), case.collection()
    chunks = case.chunks("doc", 2)
    await server_store.replace_document(tenant, collection, "doc", chunks)
    await server_store.flush(collection)
    other = await VectorStore.open(milvus_server.uri, DIMENSION, index_type=INDEX_TYPE)
    try:
        hits = await other.search(tenant, collection, chunks[0].vector, top_k=1)
        assert [(h.document_id, h.chunk_index) for h in hits] == [("doc", 0)]
    finally:
        await other.close()


async def test_no_server_is_unavailable() -> None:
    from tests.helpers import free_port

    with pytest.raises(IndexUnavailable, match=r"Milvus at 127\.0\.0\.1:\d+"):
        await VectorStore.open(f"http://127.0.0.1:{free_port()}", DIMENSION, timeout_s=3)
