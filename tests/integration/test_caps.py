"""Every cap on what a caller may send (issue 12, "Hostile input"), made to happen for real over
gRPC: the router in this process on the real mesh (embeddings, guardrails, vLLM, Milvus Lite), and
the LLM and embed services directly. Each refusal is the status code the contract names, with a
message naming the field and the limit that quotes no more than the start of what was sent;
concurrency caps carry RetryInfo and an ErrorInfo reason, and give their place back on every way
out of a stream (done, error, cancel, client gone). The caps' logic alone: tests/unit/test_caps.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from forge.v1 import common_pb2, embed_pb2, embed_pb2_grpc, llm_pb2, llm_pb2_grpc, router_pb2, router_pb2_grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from services.common.server import ForgeServer
from services.common.status import retry_details
from services.router.app import RouterApp
from services.router.ingest import StreamSlots
from tests.helpers import app_of, serving, wait_until
from tests.integration.test_router import router_app, tenant

HUGE = 200_000
# Small caps, so each can be reached with a few cheap calls; the defaults are checked in the unit tests.
CAPS: dict[str, Any] = {
    "max_ingest_streams_per_tenant": 2,
    "max_collections_per_tenant": 3,
    "max_documents_per_stream": 3,
    "max_document_chars": 4000,
}

if TYPE_CHECKING:
    Stub = router_pb2_grpc.RouterServiceAsyncStub
    IngestCall = aio.StreamStreamCall[router_pb2.IngestRequest, router_pb2.IngestResponse]


@pytest.fixture(scope="module")
def mesh(
    embed_server: ForgeServer, guardrails_server: ForgeServer, llm_server: ForgeServer
) -> dict[str, ForgeServer]:
    return {"embed": embed_server, "guardrails": guardrails_server, "llm": llm_server}


@pytest.fixture(scope="module")
async def capped(
    mesh: dict[str, ForgeServer], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ForgeServer, Stub]]:
    app = router_app(mesh, tmp_path_factory.mktemp("caps-home"), **CAPS)
    async with serving(app) as server, aio.insecure_channel(server.address) as channel:
        yield server, router_pb2_grpc.RouterServiceStub(channel)


def stream_slots(server: ForgeServer) -> StreamSlots:
    return app_of(server, RouterApp).parts().ingestor.streams


def violation(err: aio.AioRpcError) -> str:
    """The field of the BadRequest detail an INVALID_ARGUMENT carries."""
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return str(bad.field_violations[0].field)
    raise AssertionError("no BadRequest detail")


def assert_invalid(err: aio.AioRpcError, field: str, limit: str) -> None:
    details = err.details() or ""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), details)
    assert details.startswith(f"{field}: ") and limit in details, details
    assert violation(err) == field
    assert len(details) < 300, "a refusal never echoes what was sent"


def document(
    doc_id: str, text: str = "A short note about caps.", **metadata: str
) -> router_pb2.IngestRequest:
    return router_pb2.IngestRequest(document=router_pb2.Document(id=doc_id, text=text, metadata=metadata))


async def open_stream(stub: Stub, who: str, doc_id: str = "first.txt", **kwargs: Any) -> IngestCall:
    """An Ingest stream that certainly holds its slot: one document sent and acknowledged."""
    call: IngestCall = stub.Ingest(metadata=tenant(who), timeout=120, **kwargs)
    await call.write(document(doc_id))
    reply = await call.read()
    assert isinstance(reply, router_pb2.IngestResponse) and reply.documents_ingested == 1
    return call


async def finish(call: IngestCall) -> grpc.StatusCode:
    """Close the sending side and read the rest of the replies (the status comes after them)."""
    await call.done_writing()
    while await call.read() is not aio.EOF:
        pass
    return await call.code()


async def refused(call: IngestCall, *requests: router_pb2.IngestRequest) -> aio.AioRpcError:
    """Send `requests` and read to the end: the stream must fail; its error."""
    with pytest.raises(aio.AioRpcError) as failure:
        for request in requests:
            await call.write(request)
        await call.done_writing()
        while await call.read() is not aio.EOF:
            pass
    return failure.value


async def collections(stub: Stub, who: str) -> dict[str, int]:
    listed = await stub.ListCollections(router_pb2.ListCollectionsRequest(), metadata=tenant(who))
    return {c.name: c.chunk_count for c in listed.collections}


# --- DeleteDocuments ---------------------------------------------------------------------------


async def test_delete_documents_takes_at_most_1000_ids(capped: tuple[ForgeServer, Stub]) -> None:
    _, stub = capped
    for count in (1001, HUGE):
        ids = [f"doc-{i}" for i in range(count)]
        with pytest.raises(aio.AioRpcError) as failure:
            await stub.DeleteDocuments(
                router_pb2.DeleteDocumentsRequest(document_ids=ids), metadata=tenant("deleter")
            )
        assert_invalid(failure.value, "document_ids", f"at most 1000 ids per call, got {count}")
    ok = await stub.DeleteDocuments(
        router_pb2.DeleteDocumentsRequest(document_ids=[f"doc-{i}" for i in range(1000)]),
        metadata=tenant("deleter"),
    )
    assert ok.deleted_documents == 0


# --- Ingest: documents -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "limit"),
    [
        (document("long.txt", "x" * 4001), "document.text", "at most 4000 characters, got 4001"),
        (
            document("k.txt", **{str(i): "v" for i in range(33)}),
            "document.metadata",
            "at most 32 entries, got 33",
        ),
        (document("k.txt", **{"k" * HUGE: "v"}), f"document.metadata[{'k' * 40!r}]", "at most 256 bytes"),
        (document("v.txt", big="é" * 4096), "document.metadata", "at most 8192 bytes in UTF-8 per document"),
        (document("v.txt", big="v" * HUGE), "document.metadata", "at most 8192 bytes"),
        (document("i" * HUGE), "document.id", "at most 256 characters"),
    ],
)
async def test_an_oversized_document_is_refused_and_nothing_is_written(
    capped: tuple[ForgeServer, Stub], request_: router_pb2.IngestRequest, field: str, limit: str
) -> None:
    _, stub = capped
    err = await refused(stub.Ingest(metadata=tenant("sizes"), timeout=60), request_)
    assert_invalid(err, field, limit)
    assert await collections(stub, "sizes") == {"default": 0}


async def test_a_stream_takes_at_most_its_documents(capped: tuple[ForgeServer, Stub]) -> None:
    server, stub = capped
    call: IngestCall = stub.Ingest(metadata=tenant("long-stream"), timeout=120)
    replies = []
    with pytest.raises(aio.AioRpcError) as failure:
        for n in range(4):
            await call.write(document(f"part-{n}.txt", f"Part {n} of a long load."))
            replies.append(await call.read())
    assert [r.documents_ingested for r in replies if isinstance(r, router_pb2.IngestResponse)] == [1, 2, 3]
    assert_invalid(failure.value, "document", "at most 3 documents per Ingest stream")
    await wait_until(lambda: stream_slots(server).open("long-stream") == 0, 30, "the slot to be freed")


# --- Ingest: streams per tenant -----------------------------------------------------------------


async def test_ingest_streams_per_tenant_are_capped_and_freed_on_every_exit(
    capped: tuple[ForgeServer, Stub],
) -> None:
    server, stub = capped
    slots, who = stream_slots(server), "streamer"

    def open_now(n: int) -> bool:
        return slots.open(who) == n

    first, second = await open_stream(stub, who, "a.txt"), await open_stream(stub, who, "b.txt")
    assert open_now(2)
    err = await refused(stub.Ingest(metadata=tenant(who), timeout=60), document("c.txt"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert retry_details(err) == (5.0, "INGEST_STREAMS")
    assert "already has 2 Ingest streams open, the limit per tenant" in (err.details() or "")
    other = await open_stream(stub, "someone-else")  # another tenant has its own limit
    assert await finish(other) == grpc.StatusCode.OK

    # An error ends the stream: its slot is back.
    assert_invalid(await refused(first, document("")), "document.id", "must not be empty")
    await wait_until(lambda: open_now(1), 30, "the failed stream's slot")

    # A cancel.
    second.cancel()
    await wait_until(lambda: open_now(0), 30, "the cancelled stream's slot")

    # A client gone: its connection closed mid-stream.
    async with aio.insecure_channel(server.address) as gone:
        await open_stream(router_pb2_grpc.RouterServiceStub(gone), who, "d.txt")
        assert open_now(1)
    await wait_until(lambda: open_now(0), 30, "the vanished client's slot")

    # A stream that ends well frees its slot before the caller hears OK.
    done = await open_stream(stub, who, "e.txt")
    assert await finish(done) == grpc.StatusCode.OK and open_now(0)

    # The limit is whole again: two at once.
    again = [await open_stream(stub, who, "f.txt"), await open_stream(stub, who, "g.txt")]
    for call in again:
        assert await finish(call) == grpc.StatusCode.OK
    assert open_now(0)


# --- Ingest: collections per tenant ----------------------------------------------------------------


async def test_collections_per_tenant_are_capped_the_default_included(
    capped: tuple[ForgeServer, Stub],
) -> None:
    _, stub = capped
    who = "collector"

    async def ingest_into(collection: str) -> None:
        call: IngestCall = stub.Ingest(metadata=tenant(who), timeout=120)
        await call.write(router_pb2.IngestRequest(collection=collection, document=document("n.txt").document))
        assert await finish(call) == grpc.StatusCode.OK

    for collection in ("caps_one", "caps_two"):
        await ingest_into(collection)
    assert await collections(stub, who) == {"default": 0, "caps_one": 1, "caps_two": 1}
    await ingest_into("caps_two")  # an existing one: fine

    call: IngestCall = stub.Ingest(metadata=tenant(who), timeout=60)
    request = router_pb2.IngestRequest(collection="caps_three", document=document("n.txt").document)
    err = await refused(call, request)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    retry_after, reason = retry_details(err)
    assert reason == "COLLECTION_LIMIT" and retry_after is not None and retry_after >= 10
    assert (err.details() or "").startswith(
        "collection: 'caps_three' would be one more than the limit of 3 collections per tenant"
    )
    assert await collections(stub, who) == {"default": 0, "caps_one": 1, "caps_two": 1}

    # Another tenant counts its own.
    other: IngestCall = stub.Ingest(metadata=tenant("collector-2"), timeout=120)
    await other.write(request)
    assert await finish(other) == grpc.StatusCode.OK

    # Deleting a collection's documents frees its place.
    await stub.DeleteDocuments(
        router_pb2.DeleteDocumentsRequest(collection="caps_one", document_ids=["n.txt"]), metadata=tenant(who)
    )
    await ingest_into("caps_three")
    assert await collections(stub, who) == {"default": 0, "caps_two": 1, "caps_three": 1}


# --- Chat roles ----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["r" * HUGE, "tool", "USER"])
async def test_a_chat_role_is_one_of_three_and_never_echoed_whole(
    capped: tuple[ForgeServer, Stub], role: str
) -> None:
    _, stub = capped
    request = router_pb2.ChatRequest(
        messages=[
            common_pb2.ChatMessage(role=role, content="hello"),
            common_pb2.ChatMessage(role="user", content="hi"),
        ]
    )
    with pytest.raises(aio.AioRpcError) as failure:
        async for _ in stub.Chat(request, metadata=tenant("roles")):
            pass
    assert_invalid(failure.value, "messages[0].role", "must be one of system, user, assistant")
    assert len(failure.value.details() or "") < 120


# --- LLM service: Tokenize and Generate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "limit"),
    [
        (
            llm_pb2.TokenizeRequest(prompt="w " * 40_000),
            "prompt",
            "at most 65536 characters in all, got 80000",
        ),
        (
            llm_pb2.TokenizeRequest(messages=[common_pb2.ChatMessage(role="user", content="w" * 65_537)]),
            "messages",
            "at most 65536 characters in all, got 65537",
        ),
        (
            llm_pb2.TokenizeRequest(messages=[common_pb2.ChatMessage(role="user", content="hi")] * 129),
            "messages",
            "at most 128 messages, got 129",
        ),
        (
            llm_pb2.TokenizeRequest(messages=[common_pb2.ChatMessage(role="r" * HUGE, content="hi")]),
            "messages[0].role",
            "must be one of system, user, assistant",
        ),
    ],
)
async def test_tokenize_input_is_capped(
    llm_channel: aio.Channel, request_: llm_pb2.TokenizeRequest, field: str, limit: str
) -> None:
    with pytest.raises(aio.AioRpcError) as failure:
        await llm_pb2_grpc.LlmServiceStub(llm_channel).Tokenize(request_)
    assert_invalid(failure.value, field, limit)


async def test_generate_never_echoes_a_huge_role(llm_channel: aio.Channel) -> None:
    request = llm_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(role="r" * HUGE, content="hi")])
    with pytest.raises(aio.AioRpcError) as failure:
        async for _ in llm_pb2_grpc.LlmServiceStub(llm_channel).Generate(request):
            pass
    assert_invalid(failure.value, "messages[0].role", f"({HUGE} characters)")


# --- embed service -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "field", "limit"),
    [
        (embed_pb2.EmbedRequest(texts=["t"] * 257), "texts", "must hold at most 256 texts, got 257"),
        (embed_pb2.EmbedRequest(texts=["ok", "w" * 8193]), "texts[1]", "at most 8192 characters, got 8193"),
        (embed_pb2.EmbedRequest(texts=[" " * HUGE]), "texts[0]", f"at most 8192 characters, got {HUGE}"),
    ],
)
async def test_embed_input_is_capped(
    embed_channel: aio.Channel, request_: embed_pb2.EmbedRequest, field: str, limit: str
) -> None:
    with pytest.raises(aio.AioRpcError) as failure:
        await embed_pb2_grpc.EmbedServiceStub(embed_channel).Embed(request_)
    assert_invalid(failure.value, field, limit)
