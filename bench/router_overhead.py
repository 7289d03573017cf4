"""Router overhead: a grounded chat through the router vs the same stages called directly by the
client, same run, same mesh, same prompt and sampling (so the LLM work is identical).

The mesh (llm, embed, guardrails, router) runs as separate `forge serve` processes; this process is
the client. Documents are ingested through the router (tenant "bench") and, for the direct path,
into this process's own Milvus Lite file with the router's own chunker and the embed service.

- router: a chat through the SDK (`forge_client.AsyncClient.chat`, greedy, small max_tokens, top_k,
  the SDK's retries off), timed to the end of its stream (the status after the summary).
- router, raw stub: the same chat to the same router through the generated stub
  (RouterService/Chat, the request the SDK sends), timed the same way. Its difference to `router`
  is the SDK's own cost; a Search phase (one client, the two paths interleaved) measures it on a
  call with no generation in it.
- direct: what the router does, from the client: Guardrails Check(INPUT) and Embed(query)
  concurrently -> Milvus search -> Check(RETRIEVAL) per chunk concurrently -> Tokenize the
  assembled messages (services.router.prompt.assemble) -> Generate -> Check(OUTPUT) per segment of
  the answer (the router's own Segmenter, so the same checks are made).
- router, sampler off (opt-in, --tracing-arm): a second router with OTEL_TRACES_SAMPLER=always_off,
  its own Lite file; the difference to `router` is the cost of recording spans with no exporter
  (the default), in the router and, through the propagated unsampled context, in the services.
  Off by default: a third arm adds ~1.5 min, and on 2 cores its latency difference is below the
  run's noise (the CPU table resolves it better).

Sequential phase: one client, requests interleaved across the arms (rotating order), after warm-up.
Concurrent phase: N clients, a fixed number of requests per arm in blocks, rotating order per round.
Reports router added latency (router minus direct, per percentile, and the median and mean with
a 95 % interval of the paired differences), the throughput ratio (router req/s / direct req/s),
and the CPU time each arm costs per chat (client process, router process, the three services; read
from /proc between calls), which resolves the router's own cost far better than latency on a busy
2-core box. Target, reported not asserted: the router adds <= 2 ms p50. Then SDK vs raw stub, for
Chat and Search: p50/p99 of each, their ratio (SDK / raw stub), the median paired difference and
the client's CPU per call (figures from this run, no target).

    python bench/router_overhead.py [--requests 40] [--clients 4] [--concurrent-requests 24]
        [--search-requests 100] [--tracing-arm]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from _mesh import (
    DEFAULT_HOME,
    Mesh,
    admin_key,
    cpu_seconds,
    install_stop_signals,
    model_line,
    percentile,
    process_tree,
    router_metadata,
)
from forge.v1 import (
    common_pb2,
    embed_pb2,
    embed_pb2_grpc,
    guardrails_pb2,
    guardrails_pb2_grpc,
    llm_pb2,
    llm_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from grpc import aio

from forge_client import AsyncClient, Document, RetryPolicy
from services.router.budget import context_budget
from services.router.chunking import Chunker, ChunkingConfig
from services.router.clients.milvus_store import VectorStore
from services.router.ingest import DocumentInput
from services.router.output_rail import Segmenter
from services.router.ports import ChunkRecord, ContextChunk, Message
from services.router.prompt import GROUNDED_INSTRUCTION, assemble
from services.router.settings import RouterSettings

TENANT = "bench"
CLIENT = "client"
SERVICES = "services"
NOTRACE = "router, sampler off"
RAW = "router, raw stub"
# arm -> its router's process name
ROUTER_SERVICES = {"router": "router", RAW: "router", NOTRACE: "router-notrace"}
# A failed call must show, not be retried into a slower success.
NO_RETRIES = RetryPolicy(max_attempts=1)
# The mesh runs with API keys on: the benchmark calls as the admin of its FORGE_HOME.
METADATA = router_metadata(admin_key(DEFAULT_HOME), TENANT)
TARGET_P50_MS = 2.0
CALL_TIMEOUT_S = 30.0
QUESTION = "What is the access code for the Zephyr vault?"
DOCUMENTS = {
    "zephyr.md": "# The Zephyr vault\n\nThe access code for the Zephyr vault is 4417. Only the night "
    "shift at Harrowgate station may open the Zephyr vault, and every opening is logged by hand.",
    "quillmouth.txt": "The Port of Quillmouth handles 83 cargo ships per day. Its harbour master is "
    "a woman called Ona Brisk, who has held the post since 2019.",
    "fern.txt": "The Blue Fern greenhouse waters its orchids every Tuesday at seven in the morning, "
    "using rainwater collected from the roof.",
    "harrowgate.txt": "Harrowgate station runs three shifts. The night shift starts at 22:00 and is "
    "led by Idris Vane; it keeps the keys of the Zephyr vault and the east archive.",
    "archive.txt": "The east archive of Harrowgate holds maintenance manuals for the tidal pumps. "
    "Manuals older than ten years are scanned and the paper copies sent to Quillmouth.",
    "pumps.txt": "Each tidal pump at Harrowgate is serviced every 90 days. A serviced pump gets a "
    "green tag with the date and the technician's initials.",
}

Arm = Callable[[], Awaitable["Result"]]


class Degraded(RuntimeError):
    """A router chat that went without a dependency: not the path being measured."""


@dataclass(frozen=True)
class Result:
    seconds: float
    text: str
    sources: tuple[tuple[str, int], ...]
    stages: tuple[tuple[str, float], ...] = ()  # direct path only: (stage, seconds) in order
    blocked: str = ""  # the stage and rails when a guardrail blocked the chat (it then ends early)


@dataclass
class Samples:
    sequential: list[Result] = field(default_factory=list)
    concurrent: list[Result] = field(default_factory=list)
    concurrent_wall_s: float = 0.0
    # CPU seconds used by each process group while this arm ran, per phase.
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)

    def add_cpu(self, phase: str, used: dict[str, float]) -> None:
        totals = self.cpu.setdefault(phase, {})
        for group, seconds in used.items():
            totals[group] = totals.get(group, 0.0) + seconds

    def cpu_ms(self, phase: str, group: str) -> float:
        count = len(getattr(self, phase))
        return self.cpu.get(phase, {}).get(group, 0.0) * 1000 / count if count else float("nan")

    def ms(self, phase: str) -> list[float]:
        """Latencies of the chats that ran to the end (a blocked chat skips stages)."""
        return [r.seconds * 1000 for r in getattr(self, phase) if not r.blocked]

    def blocked(self, phase: str) -> list[str]:
        return [r.blocked for r in getattr(self, phase) if r.blocked]

    @property
    def rate(self) -> float:
        done = len(self.ms("concurrent"))
        return done / self.concurrent_wall_s if self.concurrent_wall_s else float("nan")


def chat_request(max_tokens: int, top_k: int) -> router_pb2.ChatRequest:
    """The raw stub's request: what the SDK sends for `router_arm`'s chat."""
    return router_pb2.ChatRequest(
        messages=[common_pb2.ChatMessage(role="user", content=QUESTION)],
        params=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
        top_k=top_k,
        priority=common_pb2.PRIORITY_INTERACTIVE,
    )


def router_arm(forge: AsyncClient, max_tokens: int, top_k: int) -> Arm:
    """A chat through the SDK, timed to the end of its stream."""

    async def chat() -> Result:
        started = time.perf_counter()
        stream = forge.chat(QUESTION, max_tokens=max_tokens, temperature=0.0, top_k=top_k)
        text = [delta.text async for delta in stream]
        elapsed = time.perf_counter() - started
        summary = stream.summary
        if summary.degraded:
            raise Degraded(f"router chat degraded (a dependency failed): {summary}")
        blocked = ""
        if summary.verdict is not None:
            v = summary.verdict
            blocked = f"{v.stage}: {','.join(sorted({f.rail for f in v.findings})) or 'policy'}"
        sources = tuple((c.document_id, c.chunk_index) for c in summary.citations)
        return Result(elapsed, "".join(text), sources, blocked=blocked)

    return chat


def raw_router_arm(stub: router_pb2_grpc.RouterServiceAsyncStub, request: router_pb2.ChatRequest) -> Arm:
    """The same chat through the generated stub, timed the same way: the SDK's baseline."""

    async def chat() -> Result:
        started = time.perf_counter()
        text: list[str] = []
        summary: router_pb2.ChatSummary | None = None
        async for reply in stub.Chat(request, metadata=METADATA, timeout=CALL_TIMEOUT_S):
            if reply.HasField("summary"):
                summary = reply.summary
            else:
                text.append(reply.delta)
        elapsed = time.perf_counter() - started
        if summary is None:
            raise RuntimeError("router chat ended without a summary")
        if summary.degraded:
            raise Degraded(f"router chat degraded (a dependency failed): {summary}")
        blocked = ""
        if summary.HasField("verdict"):
            v = summary.verdict
            rails = ",".join(sorted({f.rail for f in v.findings})) or "policy"
            blocked = f"{guardrails_pb2.Stage.Name(v.stage).removeprefix('STAGE_').lower()}: {rails}"
        sources = tuple((c.document_id, c.chunk_index) for c in summary.citations)
        return Result(elapsed, "".join(text), sources, blocked=blocked)

    return chat


def search_arms(
    forge: AsyncClient, stub: router_pb2_grpc.RouterServiceAsyncStub, top_k: int
) -> dict[str, Arm]:
    """Search for the question, through the SDK ("router") and the raw stub; `sources` are the
    hits, to check both paths got the same."""

    async def sdk() -> Result:
        started = time.perf_counter()
        found = await forge.search(QUESTION, top_k=top_k)
        elapsed = time.perf_counter() - started
        return Result(elapsed, "", tuple((h.document_id, h.chunk_index) for h in found.hits))

    request = router_pb2.SearchRequest(query=QUESTION, top_k=top_k)

    async def raw() -> Result:
        started = time.perf_counter()
        reply = await stub.Search(request, metadata=METADATA, timeout=CALL_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        return Result(elapsed, "", tuple((h.document_id, h.chunk_index) for h in reply.hits))

    return {"router": sdk, RAW: raw}


class Direct:
    """The router's chat, done by the client against the services and its own Milvus Lite file."""

    def __init__(
        self,
        channels: dict[str, aio.Channel],
        store: VectorStore,
        settings: RouterSettings,
        max_tokens: int,
        top_k: int,
    ) -> None:
        self.guard = guardrails_pb2_grpc.GuardrailsServiceStub(channels["guardrails"])
        self.embed = embed_pb2_grpc.EmbedServiceStub(channels["embed"])
        self.llm = llm_pb2_grpc.LlmServiceStub(channels["llm"])
        self.store = store
        self.settings = settings
        self.max_tokens = max_tokens
        self.top_k = top_k

    async def check(self, text: str, stage: guardrails_pb2.Stage.ValueType) -> guardrails_pb2.CheckResponse:
        return await self.guard.Check(
            guardrails_pb2.CheckRequest(text=text, stage=stage), timeout=CALL_TIMEOUT_S
        )

    @staticmethod
    def why(stage: str, reply: guardrails_pb2.CheckResponse) -> str:
        return f"{stage}: {','.join(sorted({f.rail for f in reply.findings})) or 'policy'}"

    async def ingest(self, chunker: Chunker, documents: dict[str, str]) -> int:
        total = 0
        for doc_id, text in documents.items():
            doc = DocumentInput(doc_id, text, {})
            chunks = chunker.chunk(doc.text, doc.markdown)
            reply = await self.embed.Embed(
                embed_pb2.EmbedRequest(texts=[c.text for c in chunks], kind=embed_pb2.EMBED_KIND_DOCUMENT),
                timeout=CALL_TIMEOUT_S,
            )
            records = [
                ChunkRecord(doc_id, c.index, c.text, list(e.values), {})
                for c, e in zip(chunks, reply.embeddings, strict=True)
            ]
            total += await self.store.replace_document(
                TENANT, self.settings.default_collection, doc_id, records
            )
        await self.store.flush(self.settings.default_collection)
        return total

    async def chat(self) -> Result:
        s = self.settings
        started = mark = time.perf_counter()
        stages: list[tuple[str, float]] = []

        def lap(stage: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            stages.append((stage, now - mark))
            mark = now

        verdict, embedded = await asyncio.gather(
            self.check(QUESTION, guardrails_pb2.STAGE_INPUT),
            self.embed.Embed(
                embed_pb2.EmbedRequest(texts=[QUESTION], kind=embed_pb2.EMBED_KIND_QUERY),
                timeout=CALL_TIMEOUT_S,
            ),
        )
        lap("input rail + query embedding")
        if verdict.decision == guardrails_pb2.DECISION_BLOCK:
            return Result(time.perf_counter() - started, "", (), tuple(stages), self.why("input", verdict))
        hits = await self.store.search(
            TENANT, s.default_collection, list(embedded.embeddings[0].values), self.top_k, timeout_s=10.0
        )
        lap("Milvus Lite search")
        verdicts = await asyncio.gather(*(self.check(h.text, guardrails_pb2.STAGE_RETRIEVAL) for h in hits))
        lap(f"retrieval rail ({len(hits)} chunks)")
        chunks = [
            ContextChunk(h.document_id, h.chunk_index, h.score, v.redacted_text or h.text, h.metadata)
            for h, v in zip(hits, verdicts, strict=True)
            if v.decision != guardrails_pb2.DECISION_BLOCK
        ]
        messages = [
            common_pb2.ChatMessage(role=m.role, content=m.content)
            for m in assemble(s.system_prompt or GROUNDED_INSTRUCTION, [Message("user", QUESTION)], chunks)
        ]
        counted = await self.llm.Tokenize(llm_pb2.TokenizeRequest(messages=messages), timeout=CALL_TIMEOUT_S)
        if counted.token_count > context_budget(counted.max_context_tokens, self.max_tokens):
            raise RuntimeError(f"direct path: prompt of {counted.token_count} tokens does not fit")
        lap(f"tokenize ({counted.token_count} prompt tokens)")
        stream = self.llm.Generate(
            llm_pb2.GenerateRequest(
                messages=messages,
                params=common_pb2.SamplingParams(max_tokens=self.max_tokens, temperature=0.0),
                request_id=uuid.uuid4().hex,
                priority=common_pb2.PRIORITY_INTERACTIVE,
            ),
            timeout=CALL_TIMEOUT_S,
        )
        segmenter = Segmenter(s.output_segment_chars)
        answer: list[str] = []
        first = True
        blocked = ""
        async for piece in stream:
            if first:
                lap("generate: first token")
                first = False
            segments = segmenter.feed(piece.text)
            if piece.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
                segments.append(segmenter.flush())
                lap(f"generate: other {max(0, piece.usage.completion_tokens - 1)} tokens")
            for segment in segments:
                if segment and not blocked:
                    verdict = await self.check(segment, guardrails_pb2.STAGE_OUTPUT)
                    if verdict.decision == guardrails_pb2.DECISION_BLOCK:
                        blocked = self.why("output", verdict)
                        stream.cancel()  # as the router does: closing the stream aborts the generation
                    answer.append(verdict.redacted_text or segment)
            if blocked:
                break
        lap("output rail")
        elapsed = time.perf_counter() - started
        sources = tuple((c.document_id, c.chunk_index) for c in chunks)
        return Result(elapsed, "".join(answer), sources, tuple(stages), blocked)


async def ingest_via_router(forge: AsyncClient, documents: dict[str, str]) -> int:
    stored = await forge.ingest([Document(i, t) for i, t in documents.items()], timeout=120)
    return stored.chunks


class CpuMeter:
    """CPU time of process groups, read between calls (never inside a timed call). Groups: this
    client with its Milvus Lite server, each router with its Lite server, and the three services
    with their children (vLLM's engine core and worker)."""

    def __init__(self, mesh: Mesh) -> None:
        self.groups: dict[str, list[int]] = {}
        backends: list[int] = []
        for service in mesh.services.values():
            tree = process_tree(service.process.pid)
            if service.kind == "router":
                self.groups[service.name] = tree
            else:
                backends += tree
        self.groups[SERVICES] = backends
        taken = {pid for pids in self.groups.values() for pid in pids}
        self.groups[CLIENT] = [pid for pid in process_tree(os.getpid()) if pid not in taken]  # self first

    def start(self) -> dict[str, float]:
        """Readings before a measured stretch: this client's own last, after reading the others."""
        return {**{g: cpu_seconds(p) for g, p in self.groups.items() if g != CLIENT}, CLIENT: self._client()}

    def stop(self, before: dict[str, float]) -> dict[str, float]:
        """CPU used since `start`: this client's own read first, so reading /proc is not counted."""
        client = self._client()
        after = {g: cpu_seconds(p) for g, p in self.groups.items() if g != CLIENT}
        return {CLIENT: client - before[CLIENT], **{g: after[g] - before[g] for g in after}}

    def _client(self) -> float:
        return float(time.process_time() + cpu_seconds(self.groups[CLIENT][1:]))  # this process, its Lite


async def sequential(
    arms: dict[str, Arm], samples: dict[str, Samples], n: int, meter: CpuMeter
) -> list[list[float]]:
    """Each iteration runs every arm once, in an order rotated per iteration; returns the per-iteration
    latencies (ms) in arm order, for paired differences."""
    names = list(arms)
    paired = []
    for i in range(n):
        order = names[i % len(names) :] + names[: i % len(names)]
        got = {}
        for name in order:
            before = meter.start()
            result = await arms[name]()
            samples[name].add_cpu("sequential", meter.stop(before))
            samples[name].sequential.append(result)
            got[name] = float("nan") if result.blocked else result.seconds * 1000
        paired.append([got[name] for name in names])
    return paired


async def concurrent(
    arms: dict[str, Arm],
    samples: dict[str, Samples],
    clients: int,
    requests: int,
    rounds: int,
    meter: CpuMeter,
) -> None:
    """`requests` per arm in `rounds` blocks; within a block `clients` callers drain a shared count."""
    names = list(arms)
    per_block = [requests // rounds + (1 if r < requests % rounds else 0) for r in range(rounds)]
    for r, count in enumerate(per_block):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            left = count

            async def caller(name: str = name) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    samples[name].concurrent.append(await arms[name]())

            before = meter.start()
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(clients)))
            samples[name].concurrent_wall_s += time.perf_counter() - started
            samples[name].add_cpu("concurrent", meter.stop(before))


def signed(value: float) -> str:
    return f"{value:+.1f}"


def paired_diffs(paired: list[list[float]], a: int, b: int) -> list[float]:
    """a minus b in each iteration where neither chat was blocked."""
    return [row[a] - row[b] for row in paired if not (math.isnan(row[a]) or math.isnan(row[b]))]


def mean_ci(values: list[float]) -> str:
    """Mean with a normal-approximation 95% interval: how finely this run can resolve a difference."""
    if len(values) < 2:
        return signed(statistics.fmean(values)) if values else "n/a"
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.fmean(values):+.1f} +/- {half:.1f}"


def report(
    args: argparse.Namespace,
    env_line: str,
    samples: dict[str, Samples],
    paired: list[list[float]],
    chunks: tuple[int, int],
) -> None:
    names = list(samples)
    direct, router = samples["direct"], samples["router"]
    print(
        f"\n## Router overhead: chat through the router vs the same stages called by the client\n\n"
        f"question {QUESTION!r}, top_k {args.top_k}, greedy, max_tokens {args.max_tokens}; "
        f"{len(DOCUMENTS)} documents ({chunks[0]} chunks via router, {chunks[1]} direct), "
        f"tenant {TENANT!r}; {args.warmup} warm-up per arm\n"
    )
    print("| phase | path | completed | blocked | p50 ms | p99 ms | mean ms | req/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for phase, label in (
        ("sequential", "sequential, 1 client"),
        ("concurrent", f"concurrent, {args.clients} clients"),
    ):
        for name in names:
            if not getattr(samples[name], phase):
                continue
            ms = samples[name].ms(phase)
            mean = statistics.fmean(ms) if ms else float("nan")
            rate = samples[name].rate if phase == "concurrent" else 1000 / mean
            print(
                f"| {label} | {name} | {len(ms)} | {len(samples[name].blocked(phase))} | "
                f"{percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} | {mean:.1f} | {rate:.2f} |"
            )

    col = {name: i for i, name in enumerate(names)}
    d_seq, r_seq = direct.ms("sequential"), router.ms("sequential")
    added_p50 = percentile(r_seq, 50) - percentile(d_seq, 50)
    verdict = "meets" if added_p50 <= TARGET_P50_MS else "MISSES"
    diffs = paired_diffs(paired, col["router"], col["direct"])
    rows: list[tuple[str, str, str]] = [
        ("router added latency p50, 1 client (ms)", signed(added_p50), f"<= {TARGET_P50_MS:g} ({verdict})"),
        (
            "router added latency p99, 1 client (ms)",
            signed(percentile(r_seq, 99) - percentile(d_seq, 99)),
            "",
        ),
        ("median of paired differences router - direct, 1 client (ms)", signed(statistics.median(diffs)), ""),
        ("mean of paired differences, 1 client, with 95% CI (ms)", mean_ci(diffs), ""),
        (
            "router CPU per chat, 1 client: (client + router) - client of direct (ms)",
            signed(
                router.cpu_ms("sequential", CLIENT)
                + router.cpu_ms("sequential", "router")
                - direct.cpu_ms("sequential", CLIENT)
            ),
            "",
        ),
    ]
    if router.concurrent and direct.concurrent:
        d_c, r_c = direct.ms("concurrent"), router.ms("concurrent")
        c = args.clients
        rows += [
            (
                f"router added latency p50, {c} clients (ms)",
                signed(percentile(r_c, 50) - percentile(d_c, 50)),
                "",
            ),
            (
                f"router added latency p99, {c} clients (ms)",
                signed(percentile(r_c, 99) - percentile(d_c, 99)),
                "",
            ),
            (f"throughput ratio router / direct, {c} clients", f"{router.rate / direct.rate:.3f}", ""),
        ]
    off_name = NOTRACE
    if off_name in samples:
        off = samples[off_name]
        rows += [
            (
                "tracing cost p50, 1 client: router - router with sampler off (ms)",
                signed(percentile(r_seq, 50) - percentile(off.ms("sequential"), 50)),
                "",
            ),
            (
                "tracing cost, median of paired differences, 1 client (ms)",
                signed(statistics.median(paired_diffs(paired, col["router"], col[off_name]))),
                "",
            ),
        ]
        if off.concurrent and router.concurrent:
            rows.append(
                (
                    f"throughput ratio router / sampler off, {args.clients} clients",
                    f"{router.rate / off.rate:.3f}",
                    "",
                )
            )
    print("\n| metric | value | target |")
    print("|---|---:|---|")
    for metric, value, target in rows:
        print(f"| {metric} | {value} | {target} |")

    print(
        "\n| phase | path | CPU ms/chat: client (+ its Lite) | its router (+ Lite) | llm+embed+guardrails |"
    )
    print("|---|---|---:|---:|---:|")
    for phase in ("sequential", "concurrent"):
        for name in names:
            if getattr(samples[name], phase):
                mine = samples[name].cpu_ms(phase, ROUTER_SERVICES[name]) if name in ROUTER_SERVICES else 0.0
                print(
                    f"| {phase} | {name} | {samples[name].cpu_ms(phase, CLIENT):.1f} | {mine:.1f} | "
                    f"{samples[name].cpu_ms(phase, SERVICES):.1f} |"
                )

    print("\n| direct path stage (sequential) | p50 ms | mean ms |")
    print("|---|---:|---:|")
    for i, (stage, _) in enumerate(direct.sequential[0].stages):
        ms = [r.stages[i][1] * 1000 for r in direct.sequential if len(r.stages) > i]
        print(f"| {stage} | {percentile(ms, 50):.1f} | {statistics.fmean(ms):.1f} |")

    for name in names:
        for phase in ("sequential", "concurrent"):
            reasons = samples[name].blocked(phase)
            if reasons:
                counts = ", ".join(f"{r} x{reasons.count(r)}" for r in sorted(set(reasons)))
                print(f"blocked by a guardrail ({name}, {phase}): {counts}")
    pairs = [
        (r, d)
        for r, d in zip(router.sequential, direct.sequential, strict=True)
        if not (r.blocked or d.blocked)
    ]
    same_text = sum(r.text == d.text for r, d in pairs)
    same_sources = sum(r.sources == d.sources for r, d in pairs)
    print(
        f"\nsanity (sequential): identical answers {same_text}/{len(pairs)}, identical citations "
        f"{same_sources}/{len(pairs)}; answer {pairs[0][0].text if pairs else ''!r}"
    )
    print(env_line)


def report_sdk(
    args: argparse.Namespace,
    chats: dict[str, Samples],
    chat_paired: list[list[float]],
    searches: dict[str, Samples],
    search_paired: list[list[float]],
) -> None:
    """The SDK against the generated stub, same router, same run: latency and the client's CPU."""
    print(
        "\n## SDK vs raw stub: the same calls to the same router, forge_client.AsyncClient against "
        "the generated stub\n"
    )
    print(
        "| call | completed (SDK / raw) | raw stub p50 ms | SDK p50 ms | SDK / raw p50 | raw stub p99 ms | "
        "SDK p99 ms | SDK / raw p99 | paired SDK - raw, median ms | client CPU ms/call raw | SDK |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: list[tuple[str, dict[str, Samples], str, list[list[float]] | None]] = [
        ("Chat, sequential, 1 client", chats, "sequential", chat_paired),
        (f"Chat, concurrent, {args.clients} clients", chats, "concurrent", None),
        ("Search, sequential, 1 client", searches, "sequential", search_paired),
    ]
    for label, samples, phase, paired in rows:
        sdk, raw = samples["router"], samples[RAW]
        if not getattr(sdk, phase) or not getattr(raw, phase):
            continue
        s_ms, r_ms = sdk.ms(phase), raw.ms(phase)
        names = list(samples)
        diffs = paired_diffs(paired, names.index("router"), names.index(RAW)) if paired else []
        print(
            f"| {label} | {len(s_ms)} / {len(r_ms)} | "
            f"{percentile(r_ms, 50):.2f} | {percentile(s_ms, 50):.2f} | "
            f"{percentile(s_ms, 50) / percentile(r_ms, 50):.3f} | {percentile(r_ms, 99):.2f} | "
            f"{percentile(s_ms, 99):.2f} | {percentile(s_ms, 99) / percentile(r_ms, 99):.3f} | "
            f"{signed_fine(statistics.median(diffs)) if diffs else 'n/a'} | "
            f"{raw.cpu_ms(phase, CLIENT):.2f} | {sdk.cpu_ms(phase, CLIENT):.2f} |"
        )
    pairs = list(zip(chats["router"].sequential, chats[RAW].sequential, strict=True))
    hits = list(zip(searches["router"].sequential, searches[RAW].sequential, strict=True))
    print(
        f"sanity: identical answers SDK / raw stub {sum(a.text == b.text for a, b in pairs)}/{len(pairs)}, "
        f"identical citations {sum(a.sources == b.sources for a, b in pairs)}/{len(pairs)}, identical "
        f"search hits {sum(a.sources == b.sources for a, b in hits)}/{len(hits)}"
    )


def signed_fine(value: float) -> str:
    return f"{value:+.2f}"


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=40, help="sequential requests per arm")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up requests per arm")
    parser.add_argument("--clients", type=int, default=4, help="callers in the concurrent phase")
    parser.add_argument(
        "--concurrent-requests", type=int, default=24, help="concurrent-phase requests per arm"
    )
    parser.add_argument(
        "--search-requests", type=int, default=100, help="Search calls per path (SDK, raw stub)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="concurrent-phase blocks per arm")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument(
        "--tracing-arm",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run a router with OTEL_TRACES_SAMPLER=always_off (adds ~1.5 min)",
    )
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="FORGE_HOME with the model prepared")
    args = parser.parse_args()
    install_stop_signals()

    settings = RouterSettings()
    request = chat_request(args.max_tokens, args.top_k)
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        workdir = Path(tmp)
        channels: dict[str, aio.Channel] = {}
        clients: list[AsyncClient] = []
        store: VectorStore | None = None
        async with Mesh(workdir, args.home) as mesh:
            global METADATA
            METADATA = mesh.metadata(TENANT)  # the admin key of --home
            try:
                started = time.perf_counter()
                llm, embed, guardrails = await mesh.start_backends()
                chunker = await asyncio.to_thread(
                    Chunker, ChunkingConfig(settings.chunk_max_tokens, settings.chunk_overlap_tokens)
                )
                store = await VectorStore.open(
                    str(workdir / "direct.db"), settings.embedding_dimension, default_collection="default"
                )
                await mesh.ready(embed)
                routers = {
                    "router": await mesh.start("router", "router", mesh.router_env(workdir / "router.db"))
                }
                if args.tracing_arm:
                    routers[NOTRACE] = await mesh.start(
                        ROUTER_SERVICES[NOTRACE],
                        "router",
                        mesh.router_env(workdir / "notrace.db", {"OTEL_TRACES_SAMPLER": "always_off"}),
                    )
                for service in (guardrails, *routers.values(), llm):
                    await mesh.ready(service)
                print(f"mesh SERVING after {time.perf_counter() - started:.0f} s", file=sys.stderr)
                for name in ("llm", "embed", "guardrails"):
                    channels[name] = mesh.channel(mesh.services[name])
                direct = Direct(channels, store, settings, args.max_tokens, args.top_k)
                arms: dict[str, Arm] = {}
                chunk_counts = []
                for name, service in routers.items():
                    forge = AsyncClient(
                        service.address,
                        api_key=mesh.api_key,
                        tenant=TENANT,
                        retry=NO_RETRIES,
                        timeout=CALL_TIMEOUT_S,
                    )
                    clients.append(forge)
                    chunk_counts.append(await ingest_via_router(forge, DOCUMENTS))
                    arms[name] = router_arm(forge, args.max_tokens, args.top_k)
                # The SDK's baseline: the generated stub on a channel of its own, to the first router.
                sdk = clients[0]
                channels[RAW] = mesh.channel(routers["router"])
                stub = router_pb2_grpc.RouterServiceStub(channels[RAW])
                arms[RAW] = raw_router_arm(stub, request)
                direct_chunks = await direct.ingest(chunker, DOCUMENTS)
                arms["direct"] = direct.chat
                names = ["direct", "router", RAW, *(n for n in routers if n != "router")]
                arms = {name: arms[name] for name in names}
                samples = {name: Samples() for name in names}

                for _ in range(args.warmup):
                    for name, arm in arms.items():
                        try:
                            await arm()
                        except Degraded as err:  # a cold first call on a loaded box; measured calls raise
                            print(f"warm-up ({name}): {err}", file=sys.stderr)
                print("sequential phase", file=sys.stderr)
                meter = CpuMeter(mesh)
                paired = await sequential(arms, samples, args.requests, meter)
                if args.concurrent_requests > 0:
                    print("concurrent phase", file=sys.stderr)
                    await concurrent(
                        arms, samples, args.clients, args.concurrent_requests, args.rounds, meter
                    )
                searches = search_arms(sdk, stub, args.top_k)
                search_samples = {name: Samples() for name in searches}
                search_paired: list[list[float]] = []
                if args.search_requests > 0:
                    print("search phase (SDK vs raw stub)", file=sys.stderr)
                    for _ in range(args.warmup):
                        for search in searches.values():
                            await search()
                    search_paired = await sequential(searches, search_samples, args.search_requests, meter)
                env_line = await model_line(llm.address, mesh.dialer)
            finally:
                for client in clients:
                    await client.close()
                for channel in channels.values():
                    await channel.close()
                if store is not None:
                    await store.close()
    report(args, env_line, samples, paired, (chunk_counts[0], direct_chunks))
    report_sdk(args, samples, paired, search_samples, search_paired)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except (
        KeyboardInterrupt,
        asyncio.CancelledError,
    ):  # Ctrl-C / SIGTERM: the mesh was stopped on the way out
        print("interrupted", file=sys.stderr)
        sys.exit(130)
