"""The router when Milvus fails, for real: the Milvus Lite server process the router started is
killed (SIGKILL) or frozen (SIGSTOP) under Chat, Search, Ingest, DeleteDocuments and
ListCollections. Each caller gets one clear status naming Milvus once (UNAVAILABLE when it is
gone, DEADLINE_EXCEEDED when it does not answer within the caller's deadline), a chat still
answers (degraded, no citations), and nothing is left half-written."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from forge.v1 import router_pb2
from grpc import aio

from services.common.server import ForgeServer
from tests.integration.test_router import (
    DOCUMENTS,
    answer,
    chat_request,
    ingest,
    router_app,
    router_stub,
    tenant,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mesh(
    embed_server: ForgeServer, guardrails_server: ForgeServer, llm_server: ForgeServer
) -> dict[str, ForgeServer]:
    return {"embed": embed_server, "guardrails": guardrails_server, "llm": llm_server}


def lite_server(db: Path) -> psutil.Process:
    """The Milvus Lite server process serving `db` (a child of this test process)."""
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if str(db) in " ".join(child.cmdline()):
                return child
    raise AssertionError(f"no Milvus Lite process serves {db}")


@contextlib.contextmanager
def frozen(process: psutil.Process) -> Iterator[None]:
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def router_over_lite(mesh: dict[str, ForgeServer], home: Path) -> AsyncIterator[tuple[Any, Path]]:
    db = home / "lite.db"
    app = router_app(mesh, home, milvus_uri=str(db))
    async with router_stub(app) as (stub, _):
        yield stub, db


def assert_status(error: aio.AioRpcError, code: grpc.StatusCode, prefix: str) -> None:
    details = error.details() or ""
    assert error.code() == code, details
    assert details.startswith(prefix), details
    assert "milvus unavailable: milvus unavailable" not in details


async def test_milvus_killed_chat_degrades_and_every_other_call_says_unavailable(
    mesh: dict[str, ForgeServer], tmp_path: Path
) -> None:
    async with router_over_lite(mesh, tmp_path) as (stub, db):
        await ingest(stub, "acme", DOCUMENTS)
        lite_server(db).kill()

        text, summary = await answer(
            stub.Chat(chat_request("What is the access code for the Zephyr vault?"), metadata=tenant("acme"))
        )
        assert summary.degraded and not summary.citations and text

        calls = {
            "Search": stub.Search(router_pb2.SearchRequest(query="Zephyr vault"), metadata=tenant("acme")),
            "DeleteDocuments": stub.DeleteDocuments(
                router_pb2.DeleteDocumentsRequest(document_ids=["zephyr.md"]), metadata=tenant("acme")
            ),
            "ListCollections": stub.ListCollections(
                router_pb2.ListCollectionsRequest(), metadata=tenant("acme")
            ),
        }
        for call in calls.values():
            with pytest.raises(aio.AioRpcError) as failure:
                await call
            assert_status(failure.value, grpc.StatusCode.UNAVAILABLE, "milvus unavailable: ")
        with pytest.raises(aio.AioRpcError) as failure:
            await ingest(stub, "acme", {"new.txt": "A new document."})
        assert_status(failure.value, grpc.StatusCode.UNAVAILABLE, "milvus unavailable: ")


async def test_milvus_frozen_is_deadline_exceeded_within_the_callers_deadline(
    mesh: dict[str, ForgeServer], tmp_path: Path
) -> None:
    async with router_over_lite(mesh, tmp_path) as (stub, db):
        await ingest(stub, "acme", DOCUMENTS)
        with frozen(lite_server(db)):
            with pytest.raises(aio.AioRpcError) as failure:
                await stub.Search(
                    router_pb2.SearchRequest(query="Zephyr vault"), metadata=tenant("acme"), timeout=4
                )
            assert_status(failure.value, grpc.StatusCode.DEADLINE_EXCEEDED, "milvus: ")

            request = router_pb2.IngestRequest(
                document=router_pb2.Document(id="zephyr.md", text="The access code is now 9001.")
            )
            with pytest.raises(aio.AioRpcError) as failure:
                _ = [r async for r in stub.Ingest(iter([request]), metadata=tenant("acme"), timeout=4)]
            assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failure.value.details()

            text, summary = await answer(
                stub.Chat(
                    chat_request("What is the access code for the Zephyr vault?"),
                    metadata=tenant("acme"),
                    timeout=60,
                )
            )
            assert summary.degraded and not summary.citations and text

        # Thawed: the old version is whole (the timed-out re-ingest wrote nothing or all of it).
        found = await stub.Search(
            router_pb2.SearchRequest(query="Zephyr vault access code"), metadata=tenant("acme"), timeout=30
        )
        zephyr = [h.text for h in found.hits if h.document_id == "zephyr.md"]
        assert len(zephyr) == 1 and ("4417" in zephyr[0] or "9001" in zephyr[0]), zephyr
