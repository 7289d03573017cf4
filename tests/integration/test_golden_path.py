"""The golden path under realistic traffic, on the real mesh in this process (real embeddings,
guardrails and vLLM services, Milvus Lite, real gRPC): ingest a small corpus of varied documents,
then ask everyday questions with the router's DEFAULT settings (no max_tokens, no temperature:
the answers run to 256 tokens, over several paragraphs, lists and code blocks). Every question
must end OK with a summary; issue 11 was 11 of 12 such questions ending INVALID_ARGUMENT because
a blank line in the answer reached the output rail. The model is 135M parameters, so nothing here
asserts its wording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from forge.v1 import common_pb2, router_pb2, router_pb2_grpc
from grpc import aio

from services.common.config import load_profile
from services.common.server import ForgeServer
from services.common.status import retry_details
from tests.helpers import serving
from tests.integration.test_router import ingest, poll_capacity, router_app, tenant

CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "golden"
CORPUS = {p.name: p.read_text() for p in sorted(CORPUS_DIR.iterdir()) if p.suffix in (".md", ".txt")}
TENANT = "golden"
MAX_SESSIONS = load_profile("cpu", environ={}).admission.max_sessions
CHAT_TIMEOUT_S = 300  # one answer of 256 tokens takes seconds; this only stops a hung stream

INSTALL, PORTS, CONFIG, FAQ = "kestrel-install.md", "kestrel-ports.md", "kestrel-config.md", "kestrel-faq.md"
FERRY = "harrowgate-ferry.txt"
KESTREL = (INSTALL, PORTS, CONFIG, FAQ)

# (question, documents of which at least one must be cited; () = the documents do not say).
QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is Kestrel Beacon?", KESTREL),
    ("How do I install Kestrel Beacon? Give me the steps as a numbered list.", (INSTALL,)),
    ("What are the system requirements for Kestrel Beacon?", (INSTALL,)),
    ("List the ports Kestrel Beacon listens on.", (PORTS,)),
    ("Which port does the Kestrel admin console use?", (PORTS, CONFIG)),
    ("Show me the default kestrel.yaml configuration as a code block.", (CONFIG,)),
    ("What does the forwarding.flush_interval_s option do?", (CONFIG,)),
    ("How do I change where Kestrel keeps its spool?", (CONFIG, INSTALL)),
    ('Why does the relay say "spool locked" and refuse to start?', (FAQ, INSTALL)),
    ("Can I run two Kestrel relays on one machine?", (FAQ,)),
    ("How do I check that the Kestrel installation worked?", (INSTALL,)),
    ("Write a step-by-step guide to upgrading Kestrel Beacon from version 2 to version 3.", (INSTALL,)),
    ("Which firewall rules do I need for Kestrel Beacon?", (PORTS,)),
    ("Put the Kestrel ports in a table with the protocol of each.", (PORTS,)),
    ("Summarise the Kestrel FAQ in three bullet points.", KESTREL),
    (
        "I am setting up Kestrel Beacon on a small Debian server with 2 GB of memory and I want the "
        "relay to keep readings for a whole week before it drops them. Which settings should I change "
        "in the configuration file, what values would you suggest, and is there anything else in the "
        "documentation I should watch out for on a machine like that?",
        (CONFIG,),
    ),
    ("When does the first ferry leave Harrowgate on Sundays?", (FERRY,)),
    ("How much does it cost to take a bicycle on the Harrowgate ferry?", (FERRY,)),
    ("What happens to the ferry crossing in strong winds?", (FERRY,)),
    ("Ferry fares?", (FERRY,)),
    ("What is the capital of Australia?", ()),
    ("Does Kestrel Beacon run on Windows?", ()),
    ("Write a short poem about the sea.", ()),
    ("Explain what a vector database is, in two paragraphs.", ()),
]


def default_chat(question: str) -> router_pb2.ChatRequest:
    """A chat the way a user sends one: the question only, every setting the router's default."""
    return router_pb2.ChatRequest(messages=[common_pb2.ChatMessage(role="user", content=question)])


@pytest.fixture(scope="module")
def mesh(
    embed_server: ForgeServer, guardrails_server: ForgeServer, llm_server: ForgeServer
) -> dict[str, ForgeServer]:
    return {"embed": embed_server, "guardrails": guardrails_server, "llm": llm_server}


@pytest.fixture(scope="module")
async def golden_router(
    mesh: dict[str, ForgeServer], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[router_pb2_grpc.RouterServiceStub, Any]]:
    """A router with the cpu profile's admission and the corpus ingested through its Ingest RPC."""
    app = router_app(mesh, tmp_path_factory.mktemp("golden-home"))
    async with serving(app) as server, aio.insecure_channel(server.address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        progress = await ingest(stub, TENANT, CORPUS)
        assert [p.document_id for p in progress] == list(CORPUS)
        assert progress[-1].documents_ingested == len(CORPUS)
        yield stub, router_pb2_grpc.AdminServiceStub(channel)


Outcome = tuple[list[str], router_pb2.ChatSummary]


def problems_with(question: str, cited_from: tuple[str, ...], outcome: Outcome | BaseException) -> list[str]:
    """What is wrong with one question's outcome (nothing, for a good answer)."""
    if isinstance(outcome, aio.AioRpcError):
        return [f"{question!r}: {outcome.code().name}: {outcome.details()}"]
    if isinstance(outcome, BaseException):
        return [f"{question!r}: {type(outcome).__name__}: {outcome}"]
    deltas, summary = outcome
    found = []
    if not deltas or any(not d for d in deltas) or not "".join(deltas).strip():
        found.append(f"{question!r}: the deltas are not text: {deltas!r}")
    if summary.usage.completion_tokens <= 0:
        found.append(f"{question!r}: no completion tokens in {summary.usage}")
    if summary.finish_reason not in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH):
        finish = common_pb2.FinishReason.Name(summary.finish_reason)
        found.append(f"{question!r}: {finish}, verdict {summary.verdict}")
    cited = {c.document_id for c in summary.citations}
    if not cited <= set(CORPUS):
        found.append(f"{question!r}: cites documents outside the corpus: {cited - set(CORPUS)}")
    if cited_from and not cited & set(cited_from):
        found.append(f"{question!r}: cites {sorted(cited)}, none of {list(cited_from)}")
    return found


async def deltas_and_summary(call: Any) -> Outcome:
    """Every message of one Chat stream: the deltas, then the summary, which must come last."""
    deltas: list[str] = []
    summary = None
    async for reply in call:
        assert summary is None, "nothing may follow the summary"
        if reply.HasField("summary"):
            summary = reply.summary
        else:
            deltas.append(reply.delta)
    assert summary is not None, "the stream must end with a summary"
    return deltas, summary


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_everyday_questions_with_default_settings_all_end_ok(golden_router: Any) -> None:
    stub, admin = golden_router
    slots = asyncio.Semaphore(MAX_SESSIONS)  # as many at once as the cpu profile admits

    async def ask(question: str) -> Outcome:
        async with slots:
            call = stub.Chat(default_chat(question), metadata=tenant(TENANT), timeout=CHAT_TIMEOUT_S)
            return await deltas_and_summary(call)

    outcomes = await asyncio.gather(*(ask(q) for q, _ in QUESTIONS), return_exceptions=True)
    problems = [
        p for (q, docs), o in zip(QUESTIONS, outcomes, strict=True) for p in problems_with(q, docs, o)
    ]
    assert not problems, f"{len(problems)} problems over {len(QUESTIONS)} questions:\n" + "\n".join(problems)
    capacity = await admin.GetCapacity(router_pb2.GetCapacityRequest())
    assert capacity.rejected_total["SESSION_LIMIT"] == 0  # the client kept within the limit


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_overload_with_default_settings_ends_ok_or_session_limit(golden_router: Any) -> None:
    stub, admin = golden_router
    await poll_capacity(admin, lambda c: c.active_sessions == 0)  # earlier chats have left
    before = await admin.GetCapacity(router_pb2.GetCapacityRequest())
    questions = [q for q, _ in QUESTIONS[: MAX_SESSIONS + 6]]
    assert len(set(questions)) == len(questions)

    outcomes = await asyncio.gather(
        *(
            deltas_and_summary(stub.Chat(default_chat(q), metadata=tenant(TENANT), timeout=CHAT_TIMEOUT_S))
            for q in questions
        ),
        return_exceptions=True,
    )
    # Each one either ran (its stream ended OK with the summary last) or was turned away at the door.
    completed, rejected, problems = 0, 0, []
    for question, outcome in zip(questions, outcomes, strict=True):
        if isinstance(outcome, tuple):
            completed += 1
            continue
        if isinstance(outcome, aio.AioRpcError) and outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            retry_after, reason = retry_details(outcome)
            if reason == "SESSION_LIMIT" and retry_after is not None and retry_after > 0:
                rejected += 1
                continue
        problems += problems_with(question, (), outcome)
    assert not problems, "\n".join(problems)
    assert completed >= MAX_SESSIONS and completed + rejected == len(questions)

    await poll_capacity(admin, lambda c: c.active_sessions == 0)
    after = await admin.GetCapacity(router_pb2.GetCapacityRequest())
    assert after.admitted_total - before.admitted_total == completed
    assert after.rejected_total["SESSION_LIMIT"] - before.rejected_total["SESSION_LIMIT"] == rejected
