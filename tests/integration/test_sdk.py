"""The `forge_client` SDK against a real router in this process (real embeddings and vLLM
services, Milvus Lite, real gRPC), served as `forge up --tls` serves it: TLS on the public port
and API keys. Sync and asyncio clients, every call, the key errors, a genuinely full admission
retried after the router's RetryInfo delay, and examples/ask.py run as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forge_client import (
    AsyncClient,
    Cancelled,
    Capacity,
    Client,
    Document,
    FinishReason,
    ForgeError,
    IngestProgress,
    IngestResult,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
)
from services.common.config import AdmissionConfig, load_profile
from services.common.credentials import ReloadingServerCertificate, ServerSecurity
from services.common.security.keys import KeyRing, KeyStore
from services.common.security.tls import ensure_tls_dir
from services.common.server import ForgeServer, ServerOptions
from services.router.app import RouterApp
from tests.helpers import REPO_ROOT, serving
from tests.integration.test_router import COUNTING, DOCUMENTS, poll, router_app

# The guardrails service is not the SDK's subject; without it the mesh starts faster.
NO_RAILS: dict[str, Any] = {"guardrails_enabled": False, "readiness_dependencies": "llm,embed"}
Retries = list[tuple[ForgeError, int, float]]


@dataclass
class Router:
    address: str
    ca: Path
    admin_key: str
    acme_key: str


@pytest.fixture(scope="module")
def mesh(embed_server: ForgeServer, llm_server: ForgeServer) -> dict[str, ForgeServer]:
    return {"embed": embed_server, "llm": llm_server}


@contextlib.asynccontextmanager
async def serving_secure(app: RouterApp, home: Path) -> AsyncIterator[ForgeServer]:
    """The router with TLS on its port and API keys, as `forge serve router --tls-cert` runs it."""
    tls, _ = ensure_tls_dir(home / "tls")
    certificate = ReloadingServerCertificate(tls.cert("router"), tls.key("router"), None)
    security = ServerSecurity(certificate, KeyRing(home / "keys" / "keys.yaml"), "tls", "keys")
    server = ForgeServer(app, load_profile("cpu", environ={}), ServerOptions(port=0, security=security))
    await server.start()
    try:
        await server.load_and_serve()
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="module")
async def router(
    mesh: dict[str, ForgeServer], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Router]:
    home = tmp_path_factory.mktemp("sdk-home")
    keys = KeyStore(home / "keys" / "keys.yaml")
    admin_key, acme_key = keys.create("ops", "admin"), keys.create("acme")
    async with serving_secure(router_app(mesh, home, **NO_RAILS), home) as server:
        yield Router(f"127.0.0.1:{server.port}", home / "tls" / "ca.crt", admin_key, acme_key)


def sync_session(router: Router, folder: Path) -> None:
    """Every RouterService call with the sync client (run on a thread: the router is in this loop)."""
    progress: list[IngestProgress] = []
    with Client(router.address, api_key=router.acme_key, tls=router.ca) as forge:
        result = forge.ingest_paths([folder], collection="sdk", on_progress=progress.append)
        assert [p.document_id for p in progress] == sorted(DOCUMENTS)
        assert [p.documents_ingested for p in progress] == [1, 2, 3]
        assert result == IngestResult(3, progress[-1].chunks_ingested) and result.chunks >= 3

        found = forge.search("What is the access code for the Zephyr vault?", collection="sdk", top_k=2)
        top = found.hits[0]
        assert top.document_id == "zephyr.md" and "4417" in top.text and not found.degraded
        assert top.metadata == {"source": str(folder / "zephyr.md"), "content_type": "text/markdown"}

        with forge.chat(
            "What is the access code for the Zephyr vault?", collection="sdk", max_tokens=48, temperature=0
        ) as stream:
            deltas = list(stream)
        summary = stream.summary
        assert deltas and "4417" in "".join(d.text for d in deltas)
        assert summary.citations[0].document_id == "zephyr.md" and summary.citations[0].score > 0
        assert summary.finish_reason in (FinishReason.STOP, FinishReason.LENGTH) and not summary.blocked
        assert summary.usage.prompt_tokens > 0 and summary.usage.completion_tokens > 0
        assert len(summary.trace_id) == 32 and summary.verdict is None and not summary.degraded

        assert {c.name: c.chunk_count for c in forge.list_collections()}["sdk"] == result.chunks
        deleted = forge.delete(["zephyr.md", "absent.md"], collection="sdk")
        assert deleted.documents == 1 and deleted.chunks >= 1
        after = forge.search("Zephyr vault access code", collection="sdk", top_k=10)
        assert "zephyr.md" not in {h.document_id for h in after.hits}


async def test_sync_client_ingests_searches_chats_lists_and_deletes(router: Router, tmp_path: Path) -> None:
    for name, text in DOCUMENTS.items():
        (tmp_path / name).write_text(text)
    await asyncio.to_thread(sync_session, router, tmp_path)


async def test_async_client_streams_from_an_async_source_and_reads_the_admin_api(router: Router) -> None:
    async def documents() -> AsyncIterator[Document]:
        for name in ("quillmouth.txt", "fern.txt"):
            yield Document(name, DOCUMENTS[name], {"source": "generated"})

    progress: list[IngestProgress] = []
    async with AsyncClient(router.address, api_key=router.acme_key, tls=router.ca) as forge:
        result = await forge.ingest(documents(), collection="sdk_async", on_progress=progress.append)
        assert [p.document_id for p in progress] == ["quillmouth.txt", "fern.txt"] and result.documents == 2

        stream = forge.chat(
            "Who is the harbour master of the Port of Quillmouth?",
            collection="sdk_async",
            max_tokens=32,
            temperature=0,
        )
        deltas = [d.text async for d in stream]  # the 135M model's wording is not asserted
        assert deltas and all(deltas)
        assert stream.summary.citations[0].document_id == "quillmouth.txt"
        with pytest.raises(PermissionDenied):  # a tenant key on the admin API
            await forge.capacity()

    async with AsyncClient(router.address, api_key=router.admin_key, tls=router.ca, tenant="acme") as admin:
        capacity = await admin.capacity()
        assert capacity.profile == "cpu" and capacity.active_sessions == 0 and capacity.admitted_total >= 1
        gpu = await admin.gpu_stats()
        assert gpu.gpu_available or gpu.detail  # no GPU here says why
        info = await admin.info()
        assert info.service == "router" and info.settings["auth"] == "keys" and info.started_at is not None
        hits = await admin.search("orchids", collection="sdk_async")  # acting for acme
        assert hits.hits[0].document_id == "fern.txt" and hits.hits[0].metadata["source"] == "generated"


async def test_key_errors_are_typed_and_never_retried(router: Router) -> None:
    heard: Retries = []
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.01)

    def client(api_key: str, tenant: str | None = None) -> AsyncClient:
        return AsyncClient(
            router.address,
            api_key=api_key,
            tenant=tenant,
            tls=router.ca,
            retry=policy,
            on_retry=lambda e, n, d: heard.append((e, n, d)),
        )

    for key in ("", "fk_00000000_" + "x" * 43):
        async with client(key) as forge:
            with pytest.raises(Unauthenticated) as refused:
                await forge.search("anything")
            assert "API key" in refused.value.message
            with pytest.raises(Unauthenticated):
                await forge.chat("hello").text()
    async with client(router.acme_key, tenant="beta") as forge:
        with pytest.raises(PermissionDenied):
            await forge.ingest([Document("x.txt", "x")])
    assert heard == []


@pytest.fixture(scope="module")
async def small_router(
    mesh: dict[str, ForgeServer], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A router with room for one chat session and one ingest stream per tenant (no keys)."""
    home = tmp_path_factory.mktemp("small-router")
    app = router_app(mesh, home, AdmissionConfig(max_sessions=1), max_ingest_streams_per_tenant=1, **NO_RAILS)
    async with serving(app) as server:
        yield server.address


async def test_an_ingest_refused_for_a_busy_tenant_is_sent_again_whole(small_router: str) -> None:
    heard: Retries = []
    refused = asyncio.Event()
    release = asyncio.Event()

    def retrying(error: ForgeError, attempt: int, wait_s: float) -> None:
        heard.append((error, attempt, wait_s))
        refused.set()

    async def held_open() -> AsyncIterator[Document]:
        yield Document("first.txt", "The first stream keeps its slot open.")
        await release.wait()

    def client() -> AsyncClient:
        return AsyncClient(small_router, api_key="", tenant="busy", on_retry=retrying)

    async with client() as holder, client() as second:
        first_stored = asyncio.Event()
        holding = asyncio.create_task(holder.ingest(held_open(), on_progress=lambda _: first_stored.set()))
        await asyncio.wait_for(first_stored.wait(), 60)  # the tenant's one stream is open
        one_shot = (Document(f"doc{i}.txt", f"Document number {i} of the second stream.") for i in range(3))
        second_ingest = asyncio.create_task(second.ingest(one_shot))
        await asyncio.wait_for(refused.wait(), 60)
        release.set()
        assert await holding == IngestResult(1, 1)
        result = await second_ingest
        listed = await second.search("Document number of the second stream", top_k=10)
    # Whatever the refused attempt took from the one-shot generator was sent again.
    assert result.documents == 3
    assert {h.document_id for h in listed.hits} == {"first.txt", "doc0.txt", "doc1.txt", "doc2.txt"}
    [(error, _, wait)] = heard
    assert isinstance(error, ResourceExhausted) and error.retry_after_s and wait >= error.retry_after_s


async def test_every_refused_or_rejected_ingest_reports_the_routers_own_error(small_router: str) -> None:
    """grpc aio turns a router's refusal into INTERNAL when a client write races it
    (grpc/grpc#36066): the SDK never writes while the router may be ending the stream."""
    release = asyncio.Event()

    async def held_open() -> AsyncIterator[Document]:
        yield Document("held.txt", "This stream keeps the tenant's one ingest slot.")
        await release.wait()

    def client() -> AsyncClient:
        return AsyncClient(small_router, api_key="", tenant="refusals", retry=RetryPolicy(max_attempts=1))

    async with client() as holder, client() as other:
        first_stored = asyncio.Event()
        holding = asyncio.create_task(holder.ingest(held_open(), on_progress=lambda _: first_stored.set()))
        await asyncio.wait_for(first_stored.wait(), 60)

        def many() -> list[Document]:
            return [Document(f"refused{i}.txt", f"Refused document {i}.") for i in range(8)]

        refusals = await asyncio.gather(*(other.ingest(many()) for _ in range(24)), return_exceptions=True)
        assert all(isinstance(r, ResourceExhausted) for r in refusals), refusals
        release.set()
        await holding

        # A document the router rejects mid-stream: its INVALID_ARGUMENT names the field, the
        # documents before it are stored, and none after it is sent.
        stored: list[IngestProgress] = []
        docs = [Document("ok.txt", "A document the router stores."), Document("blank.txt", "   ")]
        docs += [Document(f"after{i}.txt", "Never sent.") for i in range(5)]
        with pytest.raises(InvalidArgument) as rejected:
            await other.ingest(docs, on_progress=stored.append)
        assert rejected.value.field == "document.text"
        assert [p.document_id for p in stored] == ["ok.txt"]


async def test_a_full_router_is_retried_after_its_retry_delay(small_router: str) -> None:
    address = small_router
    heard: Retries = []
    refused_once = asyncio.Event()

    def retrying(error: ForgeError, attempt: int, wait_s: float) -> None:
        heard.append((error, attempt, wait_s))
        refused_once.set()

    def client(attempts: int) -> AsyncClient:
        return AsyncClient(
            address,
            api_key="",
            tenant="load",
            retry=RetryPolicy(max_attempts=attempts),
            on_retry=retrying,
        )

    async with client(1) as forge:
        holder = forge.chat(COUNTING, max_tokens=1500, retrieval=False, temperature=0)
        holding = asyncio.create_task(holder.text())
        await poll_capacity(forge, lambda c: c.active_sessions == 1)  # the one session is taken

        # Attempts run out while the session is held: the last refusal, with its delay.
        async with client(2) as eager:
            with pytest.raises(ResourceExhausted) as refused:
                await eager.chat("Say hi.", max_tokens=4, retrieval=False).text()
        assert refused.value.reason == "SESSION_LIMIT" and refused.value.retry_after_s
        [(error, attempt, wait)] = heard
        assert (
            attempt == 1 and error.retry_after_s and error.retry_after_s <= wait <= 1.2 * error.retry_after_s
        )

        # Freed while the client waits: its retry is admitted.
        heard.clear()
        refused_once.clear()
        async with client(6) as patient:
            answer = asyncio.create_task(patient.chat("Say hi.", max_tokens=4, retrieval=False).text())
            await asyncio.wait_for(refused_once.wait(), 60)  # refused, now waiting to retry
            holder.cancel()
            assert await answer
        with pytest.raises(Cancelled):
            await holding
        assert heard and all(e.reason == "SESSION_LIMIT" and d >= (e.retry_after_s or 0) for e, _, d in heard)
        capacity = await forge.capacity()
        assert capacity.rejected_total["SESSION_LIMIT"] == 2 + len(heard)
        assert capacity.admitted_total == 2


async def poll_capacity(forge: AsyncClient, condition: Callable[[Capacity], bool]) -> None:
    async def holds() -> bool:
        return condition(await forge.capacity())

    await poll(holds, "the router's admission state")


async def test_the_ask_example_runs_against_the_router(router: Router) -> None:
    env = {
        **os.environ,
        "FORGE_ROUTER": router.address,
        "FORGE_API_KEY": router.acme_key,
        "FORGE_ROUTER_CA": str(router.ca),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO_ROOT / "examples" / "ask.py"),
        "How do I create an API key for a tenant?",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode == 0, err.decode()
    assert "stored README.md:" in err.decode()
    assert "[1] README.md (part " in out.decode()
