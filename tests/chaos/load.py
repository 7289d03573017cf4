"""A steady, light load on the router from two tenants, each with its own API key: one worker
chatting over its tenant's documents (retrieval on) and one re-ingesting them with new versions.
Every call has a deadline and is recorded with how it ended and how long it took; what each
Ingest acknowledged goes into the ledger.

Workers pause PACE_S between calls: the load is paced, so that on two cores the mesh spends its
time recovering rather than queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from forge.v1 import common_pb2, router_pb2, router_pb2_grpc
from grpc import aio

from tests.chaos.corpus import MAX_CHUNKS_PER_TENANT, Doc, corpus, document_text
from tests.chaos.ledger import Hit, Ledger, Verdict
from tests.helpers import bearer

CHAT_DEADLINE_S = 20.0
INGEST_DEADLINE_S = 20.0
SEARCH_DEADLINE_S = 20.0
PACE_S = 1.0
CHAT_MAX_TOKENS = 12
# The client enforces its deadline itself: a call still running this long after it is a hang.
HANG_SLACK_S = 5.0
# A call that ended no later than its deadline plus this ended "within its deadline" (a loaded
# 2-core machine delays the client's own loop a little).
LATE_SLACK_S = 2.0
ALLOWED = frozenset({"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})
# A reconnecting client should find a restarted router within seconds, not after gRPC's default
# backoff of up to two minutes.
CLIENT_CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000))


@dataclass(frozen=True)
class CallRecord:
    kind: str  # "chat" or "ingest"
    tenant: str
    started: float  # time.monotonic()
    elapsed_s: float
    deadline_s: float
    code: str  # a status code name; HANG when it outlived its deadline; OK_NO_SUMMARY for a chat
    details: str = ""

    @property
    def late(self) -> bool:
        return self.elapsed_s > self.deadline_s + LATE_SLACK_S


@dataclass
class Tenant:
    name: str
    key: str
    docs: list[Doc] = field(default_factory=list)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.key)


def make_tenants(names: Sequence[str], keys: Sequence[str]) -> list[Tenant]:
    return [Tenant(n, k, corpus(n)) for n, k in zip(names, keys, strict=True)]


class Load:
    def __init__(self, router_address: str, tenants: Sequence[Tenant], ledger: Ledger) -> None:
        self.router_address = router_address
        self.tenants = list(tenants)
        self.ledger = ledger
        self.calls: list[CallRecord] = []
        self.problems: list[str] = []  # wrong answers of calls that ended OK
        self._stop = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._turn: Counter[str] = Counter()
        self._recorded = asyncio.Event()  # set at every recorded call

    def channel(self) -> aio.Channel:
        return aio.insecure_channel(self.router_address, options=CLIENT_CHANNEL_OPTIONS)

    # --- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self.calls = []
        self.problems = []
        self._stop.clear()
        for tenant in self.tenants:
            self._workers.append(asyncio.create_task(self._worker("chat", tenant)))
            self._workers.append(asyncio.create_task(self._worker("ingest", tenant)))

    async def stop(self) -> None:
        """Let each worker finish the call it is in (every call has a deadline) and end."""
        self._stop.set()
        workers, self._workers = self._workers, []
        await asyncio.gather(*workers)

    def workers(self) -> list[tuple[str, str]]:
        return [(kind, t.name) for t in self.tenants for kind in ("chat", "ingest")]

    def ok_since(self, since: float) -> set[tuple[str, str]]:
        """Workers with a call that started at or after `since` and ended OK."""
        return {(c.kind, c.tenant) for c in self.calls if c.code == "OK" and c.started >= since}

    async def until_every_worker_ok(self, since: float, timeout_s: float) -> set[tuple[str, str]]:
        """Wait (at most `timeout_s`) until every worker has an OK call started since `since`;
        the workers that have none by then."""
        deadline = time.monotonic() + timeout_s
        while (missing := set(self.workers()) - self.ok_since(since)) and time.monotonic() < deadline:
            self._recorded.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recorded.wait(), max(0.0, deadline - time.monotonic()))
        return missing

    async def _worker(self, kind: str, tenant: Tenant) -> None:
        async with self.channel() as channel:
            stub: router_pb2_grpc.RouterServiceAsyncStub = router_pb2_grpc.RouterServiceStub(channel)
            while not self._stop.is_set():
                if kind == "chat":
                    await self._timed("chat", tenant, CHAT_DEADLINE_S, self._chat(stub, tenant))
                else:
                    await self._timed("ingest", tenant, INGEST_DEADLINE_S, self._ingest(stub, tenant))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), PACE_S)

    async def _timed(self, kind: str, tenant: Tenant, deadline_s: float, call: AsyncIterator[str]) -> None:
        """Run one call (an async generator yielding its outcome) and record it."""
        started = time.monotonic()
        code, details = "HANG", f"still running {deadline_s + HANG_SLACK_S:.0f}s after it started"
        try:
            async with asyncio.timeout(deadline_s + HANG_SLACK_S):
                async for outcome in call:
                    code, details = outcome, ""
        except TimeoutError:
            pass
        except aio.AioRpcError as e:
            code, details = e.code().name, e.details() or ""
        except Exception as e:  # the client library failed, not the call: a finding too
            code, details = f"CLIENT_{type(e).__name__}", str(e)
        self.calls.append(
            CallRecord(kind, tenant.name, started, time.monotonic() - started, deadline_s, code, details)
        )
        self._recorded.set()

    # --- the calls --------------------------------------------------------------------------

    async def _chat(self, stub: router_pb2_grpc.RouterServiceAsyncStub, tenant: Tenant) -> AsyncIterator[str]:
        doc = tenant.docs[self._turn[f"chat {tenant.name}"] % len(tenant.docs)]
        self._turn[f"chat {tenant.name}"] += 1
        request = router_pb2.ChatRequest(
            messages=[common_pb2.ChatMessage(role="user", content=doc.question())],
            top_k=2,
            params=common_pb2.SamplingParams(max_tokens=CHAT_MAX_TOKENS, temperature=0.0),
        )
        summary: router_pb2.ChatSummary | None = None
        async for reply in stub.Chat(request, metadata=tenant.metadata(), timeout=CHAT_DEADLINE_S):
            if reply.HasField("summary"):
                summary = reply.summary
        if summary is None:
            yield "OK_NO_SUMMARY"
            return
        mine = {d.id for d in tenant.docs}
        foreign = sorted({c.document_id for c in summary.citations} - mine)
        if foreign:
            self.problems.append(f"{tenant.name}: a chat cited documents not its own: {foreign}")
        yield "OK"

    async def _ingest(
        self, stub: router_pb2_grpc.RouterServiceAsyncStub, tenant: Tenant
    ) -> AsyncIterator[str]:
        """One stream of one or two documents (every other stream two), each a new version."""
        turn = self._turn[f"ingest {tenant.name}"]
        self._turn[f"ingest {tenant.name}"] += 1
        docs = [tenant.docs[turn % len(tenant.docs)]]
        if turn % 2:
            docs.append(tenant.docs[(turn + 1) % len(tenant.docs)])
        versions = {d.id: self.ledger.send(d.id) for d in docs}

        async def requests() -> AsyncIterator[router_pb2.IngestRequest]:
            for d in docs:
                yield router_pb2.IngestRequest(
                    document=router_pb2.Document(
                        id=d.id,
                        text=document_text(d.topic, versions[d.id]),
                        metadata=d.metadata(versions[d.id]),
                    )
                )

        call = stub.Ingest(requests(), metadata=tenant.metadata(), timeout=INGEST_DEADLINE_S)
        async for reply in call:
            if reply.document_id not in versions:
                self.problems.append(f"{tenant.name}: Ingest acknowledged {reply.document_id!r}, never sent")
                continue
            self.ledger.ack(reply.document_id, versions[reply.document_id], reply.chunk_count)
        yield "OK"

    # --- checks -----------------------------------------------------------------------------

    async def seed(self, timeout_s: float = 120) -> None:
        """A first acknowledged version of every document, so that chats retrieve from the start."""
        deadline = time.monotonic() + timeout_s
        async with self.channel() as channel:
            stub: router_pb2_grpc.RouterServiceAsyncStub = router_pb2_grpc.RouterServiceStub(channel)
            for tenant in self.tenants:
                while any(self.ledger.docs[d.id].acked is None for d in tenant.docs):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"could not ingest {tenant.name}'s documents in {timeout_s:.0f}s")
                    await self._timed("ingest", tenant, INGEST_DEADLINE_S, self._ingest(stub, tenant))

    async def search_all(self, tenant: Tenant) -> list[Hit]:
        async with self.channel() as channel:
            reply = await router_pb2_grpc.RouterServiceStub(channel).Search(
                router_pb2.SearchRequest(query="the keeper's notes", top_k=MAX_CHUNKS_PER_TENANT),
                metadata=tenant.metadata(),
                timeout=SEARCH_DEADLINE_S,
            )
        return [Hit(h.document_id, h.chunk_index, h.text, dict(h.metadata)) for h in reply.hits]

    async def search_answers(self, timeout_s: float = 5) -> bool:
        """Whether a Search (embed, Milvus, the retrieval rail) answers now."""
        try:
            async with self.channel() as channel:
                await router_pb2_grpc.RouterServiceStub(channel).Search(
                    router_pb2.SearchRequest(query="the keeper's notes", top_k=1),
                    metadata=self.tenants[0].metadata(),
                    timeout=timeout_s,
                )
        except aio.AioRpcError:
            return False
        return True

    async def verify_documents(self, timeout_s: float = 90) -> tuple[Verdict, list[str]]:
        """Every tenant's documents against the ledger. A Search that fails is tried again until
        `timeout_s` (the mesh was just said to be SERVING; a failing Search is itself reported)."""
        total = Verdict()
        errors: list[str] = []
        for tenant in self.tenants:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    hits = await self.search_all(tenant)
                    break
                except aio.AioRpcError as e:
                    if time.monotonic() > deadline:
                        errors.append(f"{tenant.name}: Search kept failing: {e.code().name} {e.details()}")
                        hits = None
                        break
                    await asyncio.sleep(1)
            if hits is None:
                continue
            verdict = self.ledger.check(tenant.name, hits, MAX_CHUNKS_PER_TENANT)
            total.documents += verdict.documents
            total.lost += verdict.lost
            total.mixed += verdict.mixed
            total.problems += verdict.problems
        return total, errors


def codes(calls: Sequence[CallRecord]) -> Counter[str]:
    return Counter(f"{c.kind} {c.code}" for c in calls)


def call_problems(calls: Sequence[CallRecord], examples: int = 3) -> list[str]:
    """Calls that ended other than OK/UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED, or late."""
    bad: dict[str, list[CallRecord]] = {}
    for c in calls:
        if c.code not in ALLOWED:
            bad.setdefault(f"{c.kind} ended {c.code}", []).append(c)
        elif c.late:
            bad.setdefault(f"{c.kind} ended after its deadline", []).append(c)
    return [
        f"{what}: {len(records)} call(s), e.g. "
        + "; ".join(
            f"{r.tenant} after {r.elapsed_s:.1f}s of {r.deadline_s:.0f}s: {r.details[:200]!r}"
            for r in records[:examples]
        )
        for what, records in sorted(bad.items())
    ]
