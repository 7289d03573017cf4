"""Caps on what a caller may send (issue 12, "Hostile input"), on their own: each refusal names the
field and the limit, quotes no more than the start of what was sent, and comes before any work
(no chunking, embedding, tokenising or index call). Held-at-once caps (Ingest streams, collections
per tenant) give their place back on every way out. The same caps over real gRPC are in
tests/integration/test_caps.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from services.common.encoder import EmbedKind
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.embed.core import Embedder, validate_texts
from services.embed.settings import EmbedSettings
from services.llm.core import LlmCore
from services.llm.engine import EngineStats, GenerationChunk, GenerationRequest
from services.llm.settings import LlmSettings
from services.router import validation
from services.router.chunking import Chunker, ChunkingConfig
from services.router.deadline import Deadline
from services.router.documents import Documents
from services.router.ingest import (
    COLLECTION_LIMIT,
    INGEST_STREAMS,
    DocumentInput,
    Ingestor,
    StreamSlots,
)
from services.router.ports import ChatInput, Message
from services.router.settings import RouterSettings
from tests.unit.fake_index import FakeIndex
from tests.unit.test_rag import router

HUGE = 200_000


# --- quoting ---------------------------------------------------------------------------------


def test_a_long_value_is_quoted_by_its_start_and_length() -> None:
    assert validation.quoted("short") == "'short'"
    quoted = validation.quoted("x" * HUGE)
    assert quoted == f"{'x' * validation.QUOTE_CHARS!r}... ({HUGE} characters)"
    assert len(validation.quoted("y" * HUGE, 16)) < 50


def test_a_bad_tenant_or_collection_is_not_echoed_whole() -> None:
    with pytest.raises(InvalidArgument) as tenant:
        validation.tenant("!" * HUGE)
    with pytest.raises(InvalidArgument) as collection:
        validation.collection("!" * HUGE)
    assert all(len(str(e.value)) < 300 for e in (tenant, collection))
    assert f"({HUGE} characters)" in str(collection.value)


# --- document text and metadata -----------------------------------------------------------------

MAX = {"max_entries": 4, "max_key_bytes": 8, "max_total_bytes": 32}


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({str(i): "v" for i in range(5)}, "m", "at most 4 entries, got 5"),
        ({"k" * 9: "v"}, "m['kkkkkkkkk']", "keys must be at most 8 bytes in UTF-8"),
        ({"é" * 5: "v"}, "m['ééééé']", "at most 8 bytes"),  # 5 characters, 10 bytes
        ({"a": "v" * 32}, "m", "keys and values must total at most 32 bytes in UTF-8 per document"),
        ({"a": "é" * 16}, "m", "at most 32 bytes"),  # 17 characters, 33 bytes
        ({"a": "v" * 10, "b": "v" * 10, "c": "v" * 10}, "m", "at most 32 bytes"),  # 33 in all
        ({"a": "v" * HUGE}, "m", "at most 32 bytes"),
    ],
)
def test_metadata_is_capped_in_entries_key_bytes_and_total_bytes(
    values: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        validation.metadata(values, "m", **MAX)
    assert err.value.field == field and message in str(err.value)


def test_metadata_within_the_caps_passes() -> None:
    validation.metadata({"a": "v" * 31}, "m", **MAX)
    validation.metadata({"k" * 8: "é" * 12}, "m", **MAX)  # 8 + 24 = 32 bytes
    validation.metadata({}, "m", **MAX)


def test_text_length_is_checked_before_anything_walks_it() -> None:
    with pytest.raises(InvalidArgument, match=r"^t: must be at most 10 characters, got 200000$"):
        validation.text(" " * HUGE, "t", 10)  # blank too: the length is what is reported


def test_the_router_caps_are_settings_with_the_documented_defaults() -> None:
    s = RouterSettings()
    assert (s.max_delete_ids, s.max_ingest_streams_per_tenant, s.max_collections_per_tenant) == (1000, 4, 16)
    assert (s.max_metadata_entries, s.max_metadata_key_bytes, s.max_metadata_bytes) == (32, 256, 8192)
    assert (s.max_document_chars, s.max_documents_per_stream) == (2_000_000, 10_000)
    assert RouterSettings(max_delete_ids=5).max_delete_ids == 5


# --- DeleteDocuments -----------------------------------------------------------------------------


async def test_too_many_ids_are_refused_before_any_is_checked_or_deleted() -> None:
    index = FakeIndex()
    ids = ["\n"] * HUGE  # each one invalid: only the count may be looked at
    with pytest.raises(InvalidArgument) as err:
        await Documents(RouterSettings(), index).delete("acme", "", ids, Deadline(None))
    assert err.value.field == "document_ids"
    assert str(err.value) == f"document_ids: at most 1000 ids per call, got {HUGE}"
    assert index.timeouts == []
    ok = await Documents(RouterSettings(max_delete_ids=3), index).delete(
        "acme", "", ["a"] * 3, Deadline(None)
    )
    assert ok == (0, 0)


# --- Ingest --------------------------------------------------------------------------------------


@dataclass
class GatedEmbeddings:
    """Embeds once `gate` is set (set by default), so a test can hold a document mid-ingest;
    `waiting` is set when a call arrives (the document got past every check)."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    down: bool = False
    texts: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    async def embed(self, texts: Sequence[str], query: bool, timeout_s: float) -> list[list[float]]:
        self.waiting.set()
        await self.gate.wait()
        if self.down:
            raise Unavailable("embed", "connection refused")
        self.texts += len(texts)
        return [[1.0, 0.0] for _ in texts]


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(ChunkingConfig(max_tokens=32, overlap_tokens=4))


def ingestor(chunker: Chunker, embeddings: GatedEmbeddings, index: FakeIndex, **settings: object) -> Ingestor:
    return Ingestor(RouterSettings.model_validate(settings), chunker, embeddings, index)


def doc(name: str = "a.txt", text: str = "Some text.", **metadata: str) -> DocumentInput:
    return DocumentInput(name, text, metadata)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (doc(text="x" * 101), "document.text"),
        (doc(**{"k" * 257: "v"}), f"document.metadata[{'k' * 40!r}]"),
        (doc(a="v" * 8192), "document.metadata"),
    ],
)
async def test_document_caps_come_before_any_work(
    chunker: Chunker, document: DocumentInput, field: str
) -> None:
    embeddings, index = GatedEmbeddings(), FakeIndex()
    ing = ingestor(chunker, embeddings, index, max_document_chars=100)
    with ing.stream("acme", Deadline(None)) as stream, pytest.raises(InvalidArgument) as err:
        await stream.ingest("", document)
    assert err.value.field == field
    assert embeddings.texts == 0 and index.timeouts == []


async def test_a_stream_takes_at_most_its_documents(chunker: Chunker) -> None:
    embeddings, index = GatedEmbeddings(), FakeIndex()
    ing = ingestor(chunker, embeddings, index, max_documents_per_stream=2)
    with ing.stream("acme", Deadline(None)) as stream:
        await stream.ingest("", doc("a"))
        await stream.ingest("", doc("b"))
        with pytest.raises(InvalidArgument) as err:
            await stream.ingest("", doc("c"))
    assert (
        str(err.value) == "document: at most 2 documents per Ingest stream; send the rest in another stream"
    )
    assert ("acme", "default", "c") not in index.documents
    with ing.stream("acme", Deadline(None)) as stream:  # the next stream starts again
        await stream.ingest("", doc("c"))


def test_stream_slots_refuse_past_the_limit_per_tenant_and_free_on_any_exit() -> None:
    slots = StreamSlots(2)
    with slots.hold("acme"), slots.hold("acme"):
        with pytest.raises(ResourceExhausted) as refused, slots.hold("acme"):
            pass
        with slots.hold("other"):  # another tenant has its own limit
            assert (slots.open("acme"), slots.open("other")) == (2, 1)
    assert refused.value.reason == INGEST_STREAMS and refused.value.retry_after_s > 0
    assert "2 Ingest streams open, the limit per tenant" in str(refused.value)
    with pytest.raises(RuntimeError), slots.hold("acme"):
        raise RuntimeError("a stream that failed")
    assert slots.open("acme") == 0 and slots.open("other") == 0


async def test_a_cancelled_stream_gives_its_slot_back(chunker: Chunker) -> None:
    embeddings, index = GatedEmbeddings(), FakeIndex()
    embeddings.gate.clear()
    ing = ingestor(chunker, embeddings, index, max_ingest_streams_per_tenant=1)

    async def one_stream() -> None:
        with ing.stream("acme", Deadline(None)) as stream:
            await stream.ingest("", doc())

    task = asyncio.create_task(one_stream())
    await embeddings.waiting.wait()  # the stream is mid-document, holding its slot
    assert ing.streams.open("acme") == 1
    with pytest.raises(ResourceExhausted), ing.stream("acme", Deadline(None)):
        pass
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ing.streams.open("acme") == 0
    embeddings.gate.set()
    with ing.stream("acme", Deadline(None)) as stream:
        await stream.ingest("", doc())


async def test_a_tenant_holds_at_most_its_collections_the_default_included(chunker: Chunker) -> None:
    embeddings, index = GatedEmbeddings(), FakeIndex()
    ing = ingestor(chunker, embeddings, index, max_collections_per_tenant=3)
    for collection in ("", "one", "two"):
        await ing.ingest("acme", collection, doc(), Deadline(None))
    await ing.ingest("acme", "two", doc("b"), Deadline(None))  # an existing one: still fine
    await ing.ingest("other", "three", doc(), Deadline(None))  # another tenant: its own count
    calls = len(index.timeouts)
    with pytest.raises(ResourceExhausted) as refused:
        await ing.ingest("acme", "three", doc(), Deadline(None))
    assert refused.value.reason == COLLECTION_LIMIT
    assert str(refused.value).startswith("collection: 'three' would be one more than the limit of 3")
    assert len(index.timeouts) == calls + 1, "one listing, no write"
    await Documents(RouterSettings(), index).delete("acme", "one", ["a.txt"], Deadline(None))
    await ing.ingest("acme", "three", doc(), Deadline(None))  # a place was freed


async def test_two_streams_cannot_both_take_the_last_collection(chunker: Chunker) -> None:
    embeddings, index = GatedEmbeddings(), FakeIndex()
    ing = ingestor(chunker, embeddings, index, max_collections_per_tenant=2)
    embeddings.gate.clear()
    with ing.stream("acme", Deadline(None)) as first, ing.stream("acme", Deadline(None)) as second:
        writing = asyncio.create_task(first.ingest("new", doc()))
        await embeddings.waiting.wait()  # let into "new", nothing written there yet
        with pytest.raises(ResourceExhausted) as refused:
            await second.ingest("other", doc())
        assert refused.value.reason == COLLECTION_LIMIT
        embeddings.waiting.clear()
        also_new = asyncio.create_task(second.ingest("new", doc("b")))
        await embeddings.waiting.wait()  # the same new collection takes no second place
        assert ing._tenants["acme"].pending == {"new": 2}
        embeddings.gate.set()
        await asyncio.gather(writing, also_new)
    assert ing._tenants == {}, "claims are given back when the streams end"
    with pytest.raises(ResourceExhausted):  # "new" now holds chunks: it counts from the index
        await ing.ingest("acme", "other", doc(), Deadline(None))


async def test_a_failed_stream_gives_its_claim_on_a_new_collection_back(chunker: Chunker) -> None:
    embeddings, index = GatedEmbeddings(down=True), FakeIndex()
    ing = ingestor(chunker, embeddings, index, max_collections_per_tenant=2)
    with pytest.raises(Unavailable), ing.stream("acme", Deadline(None)) as stream:
        await stream.ingest("new", doc())
    assert ing._tenants == {} and index.documents == {}
    embeddings.down = False
    await ing.ingest("acme", "other", doc(), Deadline(None))


# --- chat roles --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["x" * HUGE, "tool", "", "User"])
def test_only_known_roles_and_only_their_start_is_quoted(role: str) -> None:
    chat = ChatInput(messages=(Message(role, "hi"), Message("user", "hello")))
    with pytest.raises(InvalidArgument) as err:
        router().chat.validate(chat)
    assert err.value.field == "messages[0].role"
    assert str(err.value).startswith("messages[0].role: must be one of system, user, assistant, got ")
    assert len(str(err.value)) < 120


# --- LLM service: Generate and Tokenize input ----------------------------------------------------


@dataclass
class CountingEngine:
    """An engine that only tokenises (a word a token), counting how often it was asked."""

    name: str = "fake"
    model_name: str = "fake"
    max_context_tokens: int = 2048
    tokenized: int = 0

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        raise AssertionError("not generating here")

    async def abort(self, request_id: str) -> None:
        return None

    def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        self.tokenized += 1
        return [0 for _, c in messages for _ in c.split()]

    def tokenize_text(self, text: str) -> list[int]:
        self.tokenized += 1
        return [0 for _ in text.split()]

    def stats(self) -> EngineStats:
        return EngineStats()

    def is_dead(self) -> bool:
        return False

    def shutdown(self) -> None:
        return None


def llm(max_input_chars: int = 100) -> tuple[LlmCore, CountingEngine]:
    core, engine = LlmCore(LlmSettings(max_input_chars=max_input_chars)), CountingEngine()
    core.attach(engine)
    return core, engine


@pytest.mark.parametrize(
    ("messages", "prompt", "field", "message"),
    [
        ((), "w " * 51, "prompt", "at most 100 characters in all, got 102"),
        (
            (("user", "w " * 30), ("user", "w " * 30)),
            "",
            "messages",
            "at most 100 characters in all, got 120",
        ),
        ((("r" * HUGE, "hi"),), "", "messages[0].role", "must be one of system, user, assistant; got "),
    ],
)
async def test_tokenize_input_is_capped_before_tokenising(
    messages: tuple[tuple[str, str], ...], prompt: str, field: str, message: str
) -> None:
    core, engine = llm()
    with pytest.raises(InvalidArgument) as err:
        await core.tokenize(list(messages), prompt)
    assert err.value.field == field and message in str(err.value)
    assert len(str(err.value)) < 120, "never an echo of what was sent"
    assert engine.tokenized == 0
    assert len(await core.tokenize([("user", "w " * 50)], "")) == 50  # at the limit: fine


def test_the_llm_input_caps_are_settings() -> None:
    s = LlmSettings()
    assert (s.max_input_chars, s.max_messages) == (65_536, 128)


# --- embed service -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "field", "message"),
    [
        ([], "texts", "must hold 1 to 4 texts, got none"),
        (["t"] * 5, "texts", "must hold at most 4 texts, got 5"),
        (["ok", " " * HUGE], "texts[1]", f"must be at most 10 characters, got {HUGE}"),
        (["ok", "  "], "texts[1]", "must not be empty"),
    ],
)
def test_embed_input_caps(texts: list[str], field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_texts(texts, 4, 10)
    assert err.value.field == field and message in str(err.value)


async def test_embed_caps_come_from_settings_before_the_model() -> None:
    embedder = Embedder(EmbedSettings(max_texts_per_request=2, max_chars_per_text=5))
    with pytest.raises(InvalidArgument, match=r"^texts: must hold at most 2 texts, got 3$"):
        await embedder.embed(["a", "b", "c"], EmbedKind.QUERY, True)  # no model loaded: refused first
    assert (EmbedSettings().max_texts_per_request, EmbedSettings().max_chars_per_text) == (256, 8192)
