"""The golden path under realistic traffic, on the real mesh in this process (real embeddings,
guardrails and vLLM services, Milvus Lite, real gRPC): ingest a small corpus of varied documents,
then ask everyday questions through the SDK, as a user's program does, with the router's DEFAULT
settings (no max_tokens, no temperature: the answers run to 256 tokens, over several paragraphs,
lists and code blocks). Every question must end OK with a summary; issue 11 was 11 of 12 such
questions ending INVALID_ARGUMENT because a blank line in the answer reached the output rail. The
model is 135M parameters, so nothing here asserts its wording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from forge_client import (
    AsyncClient,
    ChatSummary,
    Document,
    FinishReason,
    IngestProgress,
    ResourceExhausted,
    RetryPolicy,
)
from services.common.config import load_profile
from services.common.server import ForgeServer
from tests.helpers import serving
from tests.integration.test_router import router_app
from tests.integration.test_sdk import poll_capacity

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


@pytest.fixture(scope="module")
def mesh(
    embed_server: ForgeServer, guardrails_server: ForgeServer, llm_server: ForgeServer
) -> dict[str, ForgeServer]:
    return {"embed": embed_server, "guardrails": guardrails_server, "llm": llm_server}


@pytest.fixture(scope="module")
async def forge(
    mesh: dict[str, ForgeServer], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AsyncClient]:
    """A router with the cpu profile's admission and the corpus ingested through the SDK. The
    client does not retry: every refusal is counted as one."""
    app = router_app(mesh, tmp_path_factory.mktemp("golden-home"))
    async with serving(app) as server:
        client = AsyncClient(
            server.address,
            api_key="",
            tenant=TENANT,
            timeout=CHAT_TIMEOUT_S,
            retry=RetryPolicy(max_attempts=1),
        )
        async with client:
            stored: list[IngestProgress] = []
            result = await client.ingest(
                (Document(name, text) for name, text in CORPUS.items()), on_progress=stored.append
            )
            assert [p.document_id for p in stored] == list(CORPUS) and result.documents == len(CORPUS)
            yield client


Outcome = tuple[str, ChatSummary]


def problems_with(question: str, cited_from: tuple[str, ...], outcome: Outcome | BaseException) -> list[str]:
    """What is wrong with one question's outcome (nothing, for a good answer)."""
    if isinstance(outcome, BaseException):
        return [f"{question!r}: {type(outcome).__name__}: {outcome}"]
    text, summary = outcome
    found = []
    if not text.strip():
        found.append(f"{question!r}: the answer is blank: {text!r}")
    if summary.usage.completion_tokens <= 0:
        found.append(f"{question!r}: no completion tokens in {summary.usage}")
    if summary.finish_reason not in (FinishReason.STOP, FinishReason.LENGTH):
        found.append(f"{question!r}: {summary.finish_reason.name}, verdict {summary.verdict}")
    cited = {c.document_id for c in summary.citations}
    if not cited <= set(CORPUS):
        found.append(f"{question!r}: cites documents outside the corpus: {cited - set(CORPUS)}")
    if cited_from and not cited & set(cited_from):
        found.append(f"{question!r}: cites {sorted(cited)}, none of {list(cited_from)}")
    numbers = [c.number for c in summary.citations]
    if numbers != list(range(1, len(numbers) + 1)):
        found.append(f"{question!r}: sources numbered {numbers}, not 1 to {len(numbers)} as in the prompt")
    if not summary.model:
        found.append(f"{question!r}: the summary does not name the model that answered")
    return found


async def ask(forge: AsyncClient, question: str) -> Outcome:
    """A chat the way a user sends one: the question only, every setting the router's default.
    (The SDK raises if anything follows the summary or the summary is missing.)"""
    stream = forge.chat(question)
    return await stream.text(), stream.summary


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_everyday_questions_with_default_settings_all_end_ok(forge: AsyncClient) -> None:
    slots = asyncio.Semaphore(MAX_SESSIONS)  # as many at once as the cpu profile admits

    async def ask_within_the_limit(question: str) -> Outcome:
        async with slots:
            return await ask(forge, question)

    outcomes = await asyncio.gather(*(ask_within_the_limit(q) for q, _ in QUESTIONS), return_exceptions=True)
    problems = [
        p for (q, docs), o in zip(QUESTIONS, outcomes, strict=True) for p in problems_with(q, docs, o)
    ]
    assert not problems, f"{len(problems)} problems over {len(QUESTIONS)} questions:\n" + "\n".join(problems)
    capacity = await forge.capacity()
    assert capacity.rejected_total.get("SESSION_LIMIT", 0) == 0  # the client kept within the limit


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_overload_with_default_settings_ends_ok_or_session_limit(forge: AsyncClient) -> None:
    await poll_capacity(forge, lambda c: c.active_sessions == 0)  # earlier chats have left
    before = await forge.capacity()
    questions = [q for q, _ in QUESTIONS[: MAX_SESSIONS + 6]]
    assert len(set(questions)) == len(questions)

    outcomes = await asyncio.gather(*(ask(forge, q) for q in questions), return_exceptions=True)
    # Each one either ran (its stream ended OK with the summary last) or was turned away at the door.
    completed, rejected, problems = 0, 0, []
    for question, outcome in zip(questions, outcomes, strict=True):
        if isinstance(outcome, tuple):
            completed += 1
            continue
        if isinstance(outcome, ResourceExhausted) and outcome.reason == "SESSION_LIMIT":
            assert outcome.retry_after_s is not None and outcome.retry_after_s > 0, outcome
            rejected += 1
            continue
        problems += problems_with(question, (), outcome)
    assert not problems, "\n".join(problems)
    assert completed >= MAX_SESSIONS and completed + rejected == len(questions)

    await poll_capacity(forge, lambda c: c.active_sessions == 0)
    after = await forge.capacity()
    assert after.admitted_total - before.admitted_total == completed
    rejected_now = after.rejected_total.get("SESSION_LIMIT", 0) - before.rejected_total.get(
        "SESSION_LIMIT", 0
    )
    assert rejected_now == rejected
