"""Admission under overload: the router at max_sessions = C with the default no-queue admission,
driven first at capacity (C closed-loop clients), then at 4x capacity (4C closed-loop clients).

The mesh (llm, embed, guardrails, router) runs as separate `forge serve` processes; this process is
the client, and calls the router through the SDK (`forge_client.AsyncClient`, one client for all
callers) with the SDK's retries off: a refusal comes back as a `ResourceExhausted`, whose ErrorInfo
reason and RetryInfo delay classify it. Each call is a chat with retrieval off, greedy and a fixed
small max_tokens, so every admitted session does the same short but real work (input rail, token
count, generation, output rail). A call is timed from its start to the end of its stream (OK) or to
its error. A client whose call is refused retries (itself) after max(--retry-min-ms, --retry-scale x
the RetryInfo delay the router sent), jittered by +/-25 % so the refused clients do not move in
step; an admitted client starts its next call at once (closed loop, no think time).

Reports, per phase: accepted calls and accepted/s, accepted latency p50/p99 and its ratio to the
at-capacity baseline, rejection latency p50/p99 (call start to RESOURCE_EXHAUSTED), every status
code seen with its ErrorInfo reason and count, the router's CPU use (from /proc; with an estimate
of its CPU per rejection), and the router's own capacity counters (AdminService/GetCapacity) next to the
client's counts. --csv writes every call with its start time, to see when slow answers cluster.
Targets, reported not asserted: RESOURCE_EXHAUSTED is the only failure under overload, and refusals
are answered in <= 5 ms p99.

Then the cost of a refusal, measured rather than estimated: C long generations hold every session
slot, and --refusals Chat calls from --refusal-clients clients are each refused at once. The
router process's CPU time (its threads' schedstat) over that burst, less the holders' own CPU
rate measured just before and just after it, divided by the refusals, is printed beside the router
process's CPU per admitted call of the at-capacity phase, with their ratio. Figures, not a verdict:
CPU time on a shared box moves with its load.

Calls carry the mesh's admin API key (`_mesh.Mesh.api_key`), acting for tenant "bench": what a
refusal costs includes the key check.

All of it runs twice in one run, each time on a fresh mesh: without CPU sets
(FORGE_PROFILE__CPU_SETS=none: every process anywhere, as before) and with the `cpu` profile's
sets (router, guardrails and embed on CPU 0, the LLM with vLLM's engine core and busy-waiting worker
on CPU 1 of a 2-CPU box; services/common/cpusets.py). Each service's CPUs are read back from its
OpsService/GetInfo. A last table compares the two: refusal p50/p99 under 4x overload and in the
burst (the LLM saturated by the holders), router CPU per refusal (estimated from the 4x phase, and
measured in the burst), admitted p99, and LLM tokens/s (completion tokens of the admitted calls per
second of the phase). Targets: with CPU sets, refusal p99 <= 5 ms while the LLM is saturated, and
LLM tok/s within 10 % of the run without. The 4x phase also gets its refusal p99 without the
phase's first 0.1 s, when all its clients call at once. --cpu-sets on|off runs one arm only; the
caller's FORGE_PROFILE__CPU_SETS__<SERVICE> overrides apply to the arm with sets (another split).

    python bench/admission_overload.py [--capacity 4] [--duration 30] [--overload 4] [--refusals 2000]
        [--cpu-sets both|on|off] [--csv calls.csv]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import _admission_path as admission_path
import grpc
from _mesh import DEFAULT_HOME, Mesh, cpu_seconds, install_stop_signals, model_line, percentile, process_tree
from forge.v1 import ops_pb2, ops_pb2_grpc

from forge_client import AsyncChatStream, AsyncClient, Capacity, ForgeError, RetryPolicy

TENANT = "bench"
QUESTION = "Name three colours of the rainbow."
# The session holders of the refusal phase: a generation long enough to outlast it.
HOLD_PROMPT = "Count from 1 to 2000, separated by commas."
CALL_TIMEOUT_S = 120.0
TARGET_REJECTION_P99_MS = 5.0
# LLM tokens/s with CPU sets: at least this share of the run without.
TARGET_TOKENS_RATIO = 0.9
# The start of a phase, when every client calls at once; left out of the "steady" refusal p99.
HERD_S = 0.1
OK = "OK"
REJECTED = "RESOURCE_EXHAUSTED"
# The bench measures refusals: the SDK must hand each one back, not retry it.
NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ChatSpec:
    """One chat as the SDK takes it: the same for every call of a phase."""

    question: str
    max_tokens: int
    timeout_s: float = CALL_TIMEOUT_S

    def open(self, client: AsyncClient) -> AsyncChatStream:
        return client.chat(
            self.question,
            max_tokens=self.max_tokens,
            temperature=0.0,
            retrieval=False,
            timeout=self.timeout_s,
        )


@dataclass(frozen=True)
class Call:
    client: int
    at_s: float  # start, from the beginning of the phase
    seconds: float
    code: str  # gRPC status code name
    detail: str = ""  # ErrorInfo reason of an error; the guardrail verdict of a blocked answer
    retry_after_s: float | None = None
    tokens: int = 0  # completion tokens of an admitted call

    @property
    def completed(self) -> bool:
        """Admitted and answered in full (a blocked answer skipped the generation)."""
        return self.code == OK and not self.detail


@dataclass
class Phase:
    name: str
    clients: int
    calls: list[Call]
    wall_s: float
    router_cpu_s: float  # CPU time of the router process (and its Milvus Lite server) in the phase
    client_cpu_s: float
    router_process_cpu_s: float  # the router process alone (the refusal phase's measure)

    def ms(self, *, code: str, completed: bool = False) -> list[float]:
        return [c.seconds * 1000 for c in self.calls if c.code == code and (c.completed or not completed)]

    def count(self, code: str) -> int:
        return sum(c.code == code for c in self.calls)

    @property
    def tokens_per_s(self) -> float:
        """The LLM's completion tokens per second, over the admitted calls of the phase."""
        return sum(c.tokens for c in self.calls if c.code == OK) / self.wall_s


def error_detail(err: ForgeError) -> str:
    """The ErrorInfo reason of a failed call; for UNKNOWN, which has none, the message (the SDK
    raises UNKNOWN itself for a stream that ended without its summary)."""
    if err.reason:
        return err.reason
    return err.message if err.code == grpc.StatusCode.UNKNOWN else ""


async def one_chat(forge: AsyncClient, chat: ChatSpec, client: int, origin: float) -> Call:
    started = time.perf_counter()
    at = started - origin
    verdict = ""
    try:
        stream = chat.open(forge)
        async for _ in stream:
            pass
        summary = stream.summary
        tokens = summary.usage.completion_tokens
        if summary.verdict is not None:
            v = summary.verdict
            verdict = f"blocked, {v.stage}: {','.join(sorted({f.rail for f in v.findings})) or 'policy'}"
    except ForgeError as err:
        elapsed = time.perf_counter() - started
        return Call(client, at, elapsed, err.code.name, error_detail(err), err.retry_after_s)
    return Call(client, at, time.perf_counter() - started, OK, verdict, tokens=tokens)


async def run_phase(
    name: str,
    forge: AsyncClient,
    chat: ChatSpec,
    clients: int,
    duration_s: float,
    args: argparse.Namespace,
    router_pids: list[int],
) -> Phase:
    """`clients` closed-loop callers start calls for `duration_s`; calls in flight at the end finish
    and count, and the phase lasts until the last one does."""
    rng = random.Random(args.seed)
    calls: list[Call] = []
    router_cpu, client_cpu = cpu_seconds(router_pids), time.process_time()
    process_cpu = cpu_seconds(router_pids[:1])
    started = time.perf_counter()
    end = started + duration_s

    async def client(i: int) -> None:
        while time.perf_counter() < end:
            call = await one_chat(forge, chat, i, started)
            calls.append(call)
            if call.code == OK:
                continue
            hint = call.retry_after_s if call.retry_after_s is not None else 0.0
            pause = max(args.retry_min_ms / 1000, args.retry_scale * hint) * rng.uniform(0.75, 1.25)
            await asyncio.sleep(max(0.0, min(pause, end - time.perf_counter())))

    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = time.perf_counter() - started
    return Phase(
        name,
        clients,
        calls,
        wall,
        cpu_seconds(router_pids) - router_cpu,
        time.process_time() - client_cpu,
        cpu_seconds(router_pids[:1]) - process_cpu,
    )


@dataclass
class Refusals:
    """The refusal phase: every slot held, a burst of Chat calls that are each refused."""

    holders: int
    clients: int
    outcomes: collections.Counter[str]  # status code name -> calls
    ms: list[float]  # latency of each refused call
    wall_s: float  # the burst
    cpu_s: float  # router process CPU over the burst
    background_before: float  # router process CPU per second with only the holders running
    background_after: float
    holders_left: int  # sessions still held after the burst (all of them, or the burst was diluted)

    @property
    def refused(self) -> int:
        return self.outcomes[REJECTED]

    @property
    def background(self) -> float:
        return (self.background_before + self.background_after) / 2

    @property
    def cpu_per_refusal_s(self) -> float:
        return (self.cpu_s - self.background * self.wall_s) / max(1, self.refused)


async def _hold(forge: AsyncClient, hold: ChatSpec) -> None:
    """A long generation holding a session slot; leaving the `async with` (the task cancelled)
    cancels the call, so the router frees the slot."""
    async with hold.open(forge) as stream:
        with contextlib.suppress(ForgeError):
            async for _ in stream:
                pass


async def _cpu_rate(pid: int, window_s: float) -> float:
    before = cpu_seconds([pid])
    await asyncio.sleep(window_s)
    return (cpu_seconds([pid]) - before) / window_s


async def _active(forge: AsyncClient) -> int:
    return (await forge.capacity(timeout=10)).active_sessions


async def refusal_phase(
    forge: AsyncClient, chat: ChatSpec, args: argparse.Namespace, router_pid: int
) -> Refusals:
    """Hold every slot with long generations, then send `args.refusals` Chat calls from
    `args.refusal_clients` clients (no pause: each is refused at once) and measure the router
    process's CPU over the burst and, with only the holders running, just before and after it."""
    hold = ChatSpec(HOLD_PROMPT, args.hold_tokens, CALL_TIMEOUT_S * 5)
    holders = [asyncio.create_task(_hold(forge, hold)) for _ in range(args.capacity)]
    try:
        deadline = time.monotonic() + 120
        while await _active(forge) < args.capacity:
            if time.monotonic() > deadline:
                raise RuntimeError("the session holders were not all admitted within 120 s")
            await asyncio.sleep(0.05)
        before = await _cpu_rate(router_pid, args.background_s)
        outcomes: collections.Counter[str] = collections.Counter()
        ms: list[float] = []
        remaining = args.refusals

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    async for _ in chat.open(forge):
                        pass
                    code = OK
                except ForgeError as err:
                    code = err.code.name
                outcomes[code] += 1
                if code == REJECTED:
                    ms.append((time.perf_counter() - started) * 1000)

        cpu, started = cpu_seconds([router_pid]), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(args.refusal_clients)))
        wall, burst_cpu = time.perf_counter() - started, cpu_seconds([router_pid]) - cpu
        held = await _active(forge)
        after = await _cpu_rate(router_pid, args.background_s)
    finally:
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    return Refusals(args.capacity, args.refusal_clients, outcomes, ms, wall, burst_cpu, before, after, held)


def report_refusals(args: argparse.Namespace, base: Phase, refusals: Refusals) -> None:
    admitted = base.count(OK)
    per_admitted = base.router_process_cpu_s / max(1, admitted)
    per_refusal = refusals.cpu_per_refusal_s
    print(
        f"\n## Refusal cost: {refusals.holders} sessions held by long generations, {refusals.refused} "
        f"Chat calls refused from {refusals.clients} clients in {refusals.wall_s:.1f} s\n"
    )
    print("| router process CPU | ms per call | vs an admitted call |")
    print("|---|---:|---:|")
    print(f"| admitted call (at-capacity phase, {admitted} calls) | {per_admitted * 1000:.2f} | 1 |")
    print(
        f"| refusal (burst less the holders' background) | {per_refusal * 1000:.3f} | "
        f"{ratio(per_refusal, per_admitted)} |"
    )
    others = {code: n for code, n in refusals.outcomes.items() if code != REJECTED}
    print(
        f"burst: {refusals.cpu_s:.2f} s CPU over {refusals.wall_s:.2f} s; holders' background "
        f"{refusals.background_before * 1000:.0f} ms/s before, {refusals.background_after * 1000:.0f} ms/s "
        f"after; refusal latency p50 {percentile(refusals.ms, 50):.2f} ms, p99 "
        f"{percentile(refusals.ms, 99):.2f} ms; other outcomes: {others or 'none'}; sessions still "
        f"held after the burst: {refusals.holders_left} of {refusals.holders}"
    )


def write_csv(path: Path, phases: list[Phase]) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["phase", "client", "start_s", "ms", "status", "detail", "retry_after_s"])
        for phase in phases:
            for c in sorted(phase.calls, key=lambda c: c.at_s):
                out.writerow(
                    [
                        phase.name,
                        c.client,
                        f"{c.at_s:.4f}",
                        f"{c.seconds * 1000:.2f}",
                        c.code,
                        c.detail,
                        c.retry_after_s,
                    ]
                )


def rejection_cpu_estimate(phases: list[Phase]) -> float | None:
    """Router CPU per rejection in the overload phase (s): its router CPU less the accepted calls at
    the at-capacity phase's CPU per call, over its rejections; None without rejections."""
    base, over = phases[0], phases[-1]
    rejections = over.count(REJECTED)
    if not rejections:
        return None
    accepted_cost = base.router_cpu_s / max(1, base.count(OK))
    return (over.router_cpu_s - over.count(OK) * accepted_cost) / rejections


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base and base == base else "n/a"


def report(
    args: argparse.Namespace,
    phases: list[Phase],
    warmup: list[Call],
    before: Capacity,
    after: Capacity,
    env_line: str,
) -> None:
    base = phases[0]
    base_ms = base.ms(code=OK, completed=True)
    print(
        f"\n## Admission under overload: max_sessions {args.capacity}, no queue\n\n"
        f"Chat {QUESTION!r}, disable_retrieval, greedy, max_tokens {args.max_tokens}; {args.duration:g} s "
        f"per phase, closed loop; refused clients retry after max({args.retry_min_ms:g} ms, "
        f"{args.retry_scale:g} x RetryInfo) +/-25 %\n"
    )
    print(
        "| phase | clients | calls | accepted | accepted/s | accepted p50 ms | p99 ms | p50 vs base | "
        "p99 vs base | rejected | rejection p50 ms | rejection p99 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for phase in phases:
        ok = phase.ms(code=OK, completed=True)
        rejected = phase.ms(code=REJECTED)
        print(
            f"| {phase.name} | {phase.clients} | {len(phase.calls)} | {len(ok)} | "
            f"{len(ok) / phase.wall_s:.2f} | "
            f"{percentile(ok, 50):.1f} | {percentile(ok, 99):.1f} | "
            f"{ratio(percentile(ok, 50), percentile(base_ms, 50))} | "
            f"{ratio(percentile(ok, 99), percentile(base_ms, 99))} | {len(rejected)} | "
            f"{percentile(rejected, 50):.2f} | {percentile(rejected, 99):.2f} |"
        )

    print("\n| phase | router CPU, cores | router CPU ms per call | client CPU, cores | attempts/s |")
    print("|---|---:|---:|---:|---:|")
    for phase in phases:
        print(
            f"| {phase.name} | {phase.router_cpu_s / phase.wall_s:.2f} | "
            f"{phase.router_cpu_s * 1000 / max(1, len(phase.calls)):.2f} | "
            f"{phase.client_cpu_s / phase.wall_s:.2f} | {len(phase.calls) / phase.wall_s:.1f} |"
        )
    over = phases[-1]
    accepted_cost = base.router_cpu_s / max(1, base.count(OK))
    rejections = over.count(REJECTED)
    if (per_rejection := rejection_cpu_estimate(phases)) is not None:
        print(
            f"router CPU per rejection ~ (overload router CPU - accepted x {accepted_cost * 1000:.1f} ms, "
            f"the baseline's CPU per call) / {rejections} rejections = {per_rejection * 1000:.2f} ms"
        )

    print("\n| phase | status | reason / verdict | calls | p50 ms | max ms |")
    print("|---|---|---|---:|---:|---:|")
    for phase in phases:
        groups: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for c in phase.calls:
            groups[(c.code, c.detail)].append(c.seconds * 1000)
        for (code, detail), ms in sorted(groups.items()):
            print(
                f"| {phase.name} | {code} | {detail} | {len(ms)} | {percentile(ms, 50):.2f} | {max(ms):.2f} |"
            )

    every = [c for phase in phases for c in phase.calls]
    print("\n| counter | router GetCapacity, end | router, delta over both phases | client, both phases |")
    print("|---|---:|---:|---:|")
    admitted_by_client = sum(c.code == OK for c in every)  # admitted sessions end OK (or with a verdict)
    print(
        f"| admitted_total | {after.admitted_total} | {after.admitted_total - before.admitted_total} | "
        f"{admitted_by_client} |"
    )
    for reason in sorted(after.rejected_total):
        ours = sum(c.code == REJECTED and c.detail == reason for c in every)
        delta = after.rejected_total[reason] - before.rejected_total.get(reason, 0)
        print(f"| rejected_total[{reason}] | {after.rejected_total[reason]} | {delta} | {ours} |")
    print(
        f"(the end totals include {len(warmup)} warm-up call(s); GetCapacity at the end: "
        f"{after.active_sessions} active, max_sessions {after.max_sessions}, queue "
        f"{'on' if after.queue_enabled else 'off'})"
    )

    per_client = collections.Counter(c.client for c in over.calls if c.code == OK)
    accepted_counts = sorted(per_client.get(i, 0) for i in range(over.clients))
    others = sorted({c.code for c in over.calls} - {OK, REJECTED})
    rejection_p99 = percentile(over.ms(code=REJECTED), 99)
    verdict = "meets" if rejection_p99 <= TARGET_REJECTION_P99_MS else "MISSES"
    print(
        f"\nfairness under overload: accepted calls per client min {accepted_counts[0]}, median "
        f"{statistics.median(accepted_counts):g}, max {accepted_counts[-1]} ({over.clients} clients)"
    )
    print(
        "targets: failures other than RESOURCE_EXHAUSTED under overload: "
        f"{', '.join(others) if others else 'none'} ({'MISSES' if others else 'meets'}); "
        f"rejection p99 <= {TARGET_REJECTION_P99_MS:g} ms: {rejection_p99:.2f} ms ({verdict})"
    )
    print(env_line)


@dataclass
class Arm:
    """One run of every phase on its own mesh, with or without the profile's CPU sets."""

    label: str
    phases: list[Phase]
    warmup: list[Call]
    before: Capacity
    after: Capacity
    refusals: Refusals
    env_line: str
    cpus: dict[str, str]  # service -> the CPUs its GetInfo reports


ARMS = {"off": "no CPU sets", "on": "CPU sets"}


async def service_cpus(mesh: Mesh, forge: AsyncClient) -> dict[str, str]:
    """Each service's CPUs as its OpsService/GetInfo reports them: the router's through the SDK
    (admin key), the others' over the mesh's mutual TLS (they are no part of the public API)."""
    cpus = {}
    for name, service in mesh.services.items():
        if service.kind == "router":
            settings = (await forge.info(timeout=10)).settings
        else:
            async with mesh.channel(service) as channel:
                reply = await ops_pb2_grpc.OpsServiceStub(channel).GetInfo(
                    ops_pb2.GetInfoRequest(), timeout=10
                )
            settings = reply.settings
        cpus[name] = settings.get("cpus", "?")
    return cpus


async def run_arm(
    args: argparse.Namespace,
    chat: ChatSpec,
    admission: dict[str, str],
    arm: str,
    workdir: Path,
) -> Arm:
    """Start a fresh mesh with (`on`) or without (`off`) the cpu profile's CPU sets, and run the
    phases and the refusal burst on it."""
    label = ARMS[arm]
    print(f"arm {label}: starting the mesh", file=sys.stderr)
    async with Mesh(workdir, args.home) as mesh:
        # Off: no sets. On: the profile's sets, with the caller's FORGE_PROFILE__CPU_SETS__<SERVICE>
        # overrides (to try another split), never a FORGE_PROFILE__CPU_SETS=none from the shell.
        if arm == "off":
            for name in [n for n in mesh.env if n.startswith("FORGE_PROFILE__CPU_SETS")]:
                del mesh.env[name]
            mesh.env["FORGE_PROFILE__CPU_SETS"] = "none"
        else:
            mesh.env.pop("FORGE_PROFILE__CPU_SETS", None)
        started = time.perf_counter()
        llm, embed, guardrails = await mesh.start_backends()
        await mesh.ready(embed)
        router = await mesh.start("router", "router", mesh.router_env(workdir / "router.db", admission))
        for service in (guardrails, router, llm):
            await mesh.ready(service)
        print(f"mesh SERVING after {time.perf_counter() - started:.0f} s", file=sys.stderr)
        # One SDK client (one channel) for every caller: the admin key, acting for TENANT.
        async with AsyncClient(
            router.address, api_key=mesh.api_key, tenant=TENANT, retry=NO_RETRIES
        ) as forge:
            cpus = await service_cpus(mesh, forge)
            print(f"arm {label}: CPUs {cpus}", file=sys.stderr)
            origin = time.perf_counter()
            warmup = [await one_chat(forge, chat, -1, origin) for _ in range(args.warmup)]
            failed = [c for c in warmup if c.code != OK]
            if failed:
                raise RuntimeError(f"warm-up chats failed: {failed}")
            router_pids = process_tree(router.process.pid)
            before = await forge.capacity(timeout=10)
            phases = []
            for name, clients in (
                ("at capacity", args.capacity),
                (f"{args.overload}x capacity", args.overload * args.capacity),
            ):
                print(f"phase {name}: {clients} clients for {args.duration:g} s", file=sys.stderr)
                phases.append(await run_phase(name, forge, chat, clients, args.duration, args, router_pids))
            after = await forge.capacity(timeout=10)
            print(f"refusal phase: {args.refusals} refused calls", file=sys.stderr)
            refusals = await refusal_phase(forge, chat, args, router.process.pid)
        env_line = await model_line(llm.address, mesh.dialer)
    return Arm(label, phases, warmup, before, after, refusals, env_line, cpus)


def report_arms(args: argparse.Namespace, arms: list[Arm]) -> None:
    """The arms side by side, and the CPU-set targets when both ran."""
    print(
        f"\n## Without and with CPU sets (same run, a fresh mesh each; {args.overload}x = the "
        "overload phase)\n"
    )
    x = f"{args.overload}x"
    print(
        f"| arm | CPUs router / guardrails / embed / llm | refusal p50 ms ({x}) | refusal p99 ms ({x}) | "
        f"refusal p99 ms ({x}, after its first {HERD_S:g} s) | refusal p50 ms (burst) | "
        f"refusal p99 ms (burst) | router CPU ms per refusal ({x} est.) | "
        f"router CPU ms per refusal (burst) | admitted p99 ms (at capacity) | admitted p99 ms ({x}) | "
        f"LLM tok/s (at capacity) | LLM tok/s ({x}) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for arm in arms:
        base, over, burst = arm.phases[0], arm.phases[-1], arm.refusals
        estimate = rejection_cpu_estimate(arm.phases)
        cpus = " / ".join(arm.cpus.get(s, "?") for s in ("router", "guardrails", "embed", "llm"))
        steady = [c.seconds * 1000 for c in over.calls if c.code == REJECTED and c.at_s >= HERD_S]
        print(
            f"| {arm.label} | {cpus} | {percentile(over.ms(code=REJECTED), 50):.2f} | "
            f"{percentile(over.ms(code=REJECTED), 99):.2f} | {percentile(steady, 99):.2f} | "
            f"{percentile(burst.ms, 50):.2f} | "
            f"{percentile(burst.ms, 99):.2f} | "
            f"{estimate * 1000 if estimate is not None else float('nan'):.2f} | "
            f"{burst.cpu_per_refusal_s * 1000:.3f} | "
            f"{percentile(base.ms(code=OK, completed=True), 99):.1f} | "
            f"{percentile(over.ms(code=OK, completed=True), 99):.1f} | "
            f"{base.tokens_per_s:.1f} | {over.tokens_per_s:.1f} |"
        )
    on = next((a for a in arms if a.label == ARMS["on"]), None)
    off = next((a for a in arms if a.label == ARMS["off"]), None)
    if on is None:
        return
    p99 = max(percentile(on.phases[-1].ms(code=REJECTED), 99), percentile(on.refusals.ms, 99))
    verdict = "meets" if p99 <= TARGET_REJECTION_P99_MS else "MISSES"
    line = (
        f"targets with CPU sets: refusal p99 <= {TARGET_REJECTION_P99_MS:g} ms ({args.overload}x and burst): "
        f"{p99:.2f} ms ({verdict})"
    )
    if off is not None:
        tokens = min(
            on.phases[0].tokens_per_s / max(1e-9, off.phases[0].tokens_per_s),
            on.phases[-1].tokens_per_s / max(1e-9, off.phases[-1].tokens_per_s),
        )
        verdict = "meets" if tokens >= TARGET_TOKENS_RATIO else "MISSES"
        line += (
            f"; LLM tok/s >= {TARGET_TOKENS_RATIO:g} x without (worse of the two phases): "
            f"{tokens:.2f} x ({verdict})"
        )
    print(line)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--capacity", type=int, default=4, help="router max_sessions (C)")
    parser.add_argument("--overload", type=int, default=4, help="overload clients = this x capacity")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4, help="sequential warm-up chats")
    parser.add_argument("--retry-min-ms", type=float, default=50.0, help="shortest pause before a retry")
    parser.add_argument("--retry-scale", type=float, default=0.5, help="share of the RetryInfo delay to wait")
    parser.add_argument("--seed", type=int, default=0, help="seed of the retry jitter")
    parser.add_argument("--refusals", type=int, default=2000, help="refused calls of the refusal phase")
    parser.add_argument("--refusal-clients", type=int, default=4, help="their concurrent callers")
    parser.add_argument(
        "--hold-tokens", type=int, default=1500, help="max_tokens of the refusal phase's session holders"
    )
    parser.add_argument(
        "--background-s", type=float, default=2.0, help="holders-only CPU window before and after the burst"
    )
    parser.add_argument(
        "--cpu-sets",
        choices=["both", "on", "off"],
        default="both",
        help="run without CPU sets, then with the cpu profile's (both), or one of them",
    )
    parser.add_argument(
        "--csv", type=Path, help="also write every call (arm/phase, client, start, ms, status) here"
    )
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="FORGE_HOME with the model prepared")
    parser.add_argument(
        "--admission-path-only",
        action="store_true",
        help="only the in-process vs Redis admission table (bench/_admission_path.py; seconds)",
    )
    args = parser.parse_args()
    install_stop_signals()
    # The cost of shared admission (a Redis round trip per Chat) beside in-process admission.
    admission_path.report(await admission_path.measure())
    if args.admission_path_only:
        return 0

    chat = ChatSpec(QUESTION, args.max_tokens)
    admission = {
        "FORGE_PROFILE__ADMISSION__MAX_SESSIONS": str(args.capacity),
        "FORGE_PROFILE__ADMISSION__MAX_SESSIONS_PER_TENANT": "0",
        "FORGE_PROFILE__ADMISSION__QUEUE__ENABLED": "false",
    }
    which = ["off", "on"] if args.cpu_sets == "both" else [args.cpu_sets]
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        for arm in which:
            (Path(tmp) / arm).mkdir()
        arms = [await run_arm(args, chat, admission, arm, Path(tmp) / arm) for arm in which]
    for arm in arms:
        print(f"\n# Arm: {arm.label} (CPUs per service: {arm.cpus})")
        report(args, arm.phases, arm.warmup, arm.before, arm.after, arm.env_line)
        report_refusals(args, arm.phases[0], arm.refusals)
    report_arms(args, arms)
    if args.csv is not None:
        write_csv(args.csv, [replace(p, name=f"{a.label}/{p.name}") for a in arms for p in a.phases])
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
