"""One chaos round: a fault (SIGKILL, or SIGSTOP for FREEZE_S then SIGCONT) of one process while
the load runs, the wait for the mesh to be SERVING again, and every check of issue 13 after it.

A round's findings are what the issue forbids (a lost or mixed document, a call that ended
UNKNOWN/INTERNAL or hung, a session or process left behind, a service not SERVING again, a
restart after a short freeze...). The suite asserts there are none; bench/chaos.py counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import psutil
from grpc import aio

from tests.chaos.load import HANG_SLACK_S, INGEST_DEADLINE_S, Load, call_problems, codes
from tests.chaos.mesh import BACKENDS, ForgeUp, missing_entries, not_serving
from tests.chaos.milvus import RestartableMilvus

FREEZE_S = 20.0
# Bounds on waiting, not expectations: a vLLM restart takes ~50 s on an idle 2-core machine.
HEALTHY_BEFORE_S = 120.0
WARM_S = 120.0
RECOVERY_S = 240.0
ANSWERS_AFTER_S = 120.0
CAPACITY_S = 30.0
ORPHANS_S = 15.0

TARGETS = ("llm", "engine", "embed", "guardrails", "router", "milvus")
KINDS = ("kill", "stop")


@dataclass(frozen=True)
class Fault:
    target: str  # a service, "engine" (vLLM's engine core process) or "milvus" (the Milvus server)
    kind: str  # "kill" (SIGKILL) or "stop" (SIGSTOP for FREEZE_S, then SIGCONT)

    @property
    def id(self) -> str:
        return f"{self.target}-{self.kind}"


LITE_FAULTS = tuple(Fault(t, k) for t in ("llm", "engine", "embed", "guardrails", "router") for k in KINDS)
SERVER_FAULTS = tuple(Fault("milvus", k) for k in KINDS)


@dataclass
class RoundReport:
    fault: Fault
    # From the end of the fault (SIGKILL sent, or SIGCONT sent) to every service SERVING again
    # (with a new process where one was killed); None when that did not happen within RECOVERY_S.
    recovered_s: float | None = None
    calls: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    mixed: int = 0
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.fault.id}: {len(self.findings)} finding(s)"]
        lines += [f"  - {f}" for f in self.findings]
        lines += [f"  note: {n}" for n in self.notes]
        recovered = "never" if self.recovered_s is None else f"{self.recovered_s:.1f}s"
        lines.append(f"  recovered after {recovered}; calls {dict(sorted(self.calls.items()))}")
        lines += ["  forge up said:", *(f"    {c}" for c in self.console)]
        return "\n".join(lines)


@dataclass
class Pids:
    services: dict[str, int | None]
    engine: int | None

    @classmethod
    def of(cls, mesh: ForgeUp) -> Pids:
        services = {}
        for name in (*BACKENDS, "router"):
            p = mesh.service(name)
            services[name] = p.pid if p is not None else None
        engine = mesh.engine()
        return cls(services, engine.pid if engine is not None else None)


async def run_round(
    mesh: ForgeUp, load: Load, fault: Fault, milvus: RestartableMilvus | None = None
) -> RoundReport:
    report = RoundReport(fault)
    console_from, log_from = len(mesh.console), mesh.log_size()
    bad_acks_from = len(load.ledger.bad_acks)
    try:
        await _round(mesh, load, fault, milvus, report)
    finally:
        report.console = [c.text for c in mesh.console[console_from:]] + mesh.supervisor_lines(log_from)
        report.findings += load.ledger.bad_acks[bad_acks_from:]
    return report


async def _round(
    mesh: ForgeUp, load: Load, fault: Fault, milvus: RestartableMilvus | None, report: RoundReport
) -> None:
    unhealthy, health = await wait_healthy(mesh, HEALTHY_BEFORE_S)
    if unhealthy:
        report.findings.append(f"not SERVING before the fault (left so by an earlier round?): {unhealthy}")
        return
    report.findings += [
        f"the router has no health entry {m.removeprefix('router ')!r}" for m in missing_entries(health)
    ]
    mesh.snapshot()
    before = Pids.of(mesh)
    load.start()
    try:
        started = time.monotonic()
        cold = await load.until_every_worker_ok(started, WARM_S)
        if cold:
            report.findings.append(f"before the fault, no OK call in {WARM_S:.0f}s from {sorted(cold)}")
        target = _target(mesh, fault, milvus)
        if target is None:
            report.findings.append(f"no {fault.target} process to fault")
            return
        fault_end = await _inject(fault, target, milvus, report)
        recovered_at, health = await wait_recovered(mesh, load, fault, before, RECOVERY_S)
        if recovered_at is None:
            still = not_serving(health) or "the killed process not replaced"
            report.findings.append(f"not SERVING again {RECOVERY_S:.0f}s after the fault: {still}")
        else:
            report.recovered_s = recovered_at - fault_end
            silent = await load.until_every_worker_ok(recovered_at, ANSWERS_AFTER_S)
            if silent:
                report.findings.append(
                    f"SERVING again, but no OK call in {ANSWERS_AFTER_S:.0f}s after it from {sorted(silent)}"
                )
        if fault.kind == "stop" and fault.target != "milvus":
            after = Pids.of(mesh)
            if after != before:
                report.findings.append(
                    f"restarted after a {FREEZE_S:.0f}s SIGSTOP (a short freeze is not a death): "
                    f"{before} -> {after}"
                )
    finally:
        await asyncio.wait_for(load.stop(), INGEST_DEADLINE_S + HANG_SLACK_S + 10)
    report.calls = codes(load.calls)
    report.findings += call_problems(load.calls) + load.problems
    report.findings += await _capacity_problems(mesh)
    report.findings += await _orphans(mesh)
    verdict, errors = await load.verify_documents()
    report.lost, report.mixed = verdict.lost, verdict.mixed
    report.findings += errors + verdict.problems
    unhealthy, _ = await wait_healthy(mesh, 30)
    if unhealthy:
        report.findings.append(f"not SERVING after the checks: {unhealthy}")


def _target(mesh: ForgeUp, fault: Fault, milvus: RestartableMilvus | None) -> psutil.Process | None:
    if fault.target == "engine":
        return mesh.engine()
    if fault.target == "milvus":
        assert milvus is not None, "a Milvus server fault needs the mesh on a Milvus server"
        return milvus.server_process()
    return mesh.service(fault.target)


async def _inject(
    fault: Fault, target: psutil.Process, milvus: RestartableMilvus | None, report: RoundReport
) -> float:
    """Do the fault; returns when it ended (monotonic)."""
    if fault.kind == "kill":
        target.send_signal(signal.SIGKILL)
        ended = time.monotonic()
        if milvus is not None and fault.target == "milvus":
            # Nobody else supervises the Milvus server: the suite restarts it on the same data.
            await asyncio.to_thread(milvus.restart)
        return ended
    target.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(FREEZE_S)  # the fault itself: a process frozen this long
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            target.send_signal(signal.SIGCONT)
    ended = time.monotonic()
    if milvus is not None and fault.target == "milvus" and not milvus.running():
        report.notes.append("the Milvus server exited after SIGCONT; restarted on the same data")
        await asyncio.to_thread(milvus.restart)
    return ended


async def wait_healthy(mesh: ForgeUp, timeout_s: float) -> tuple[dict[str, str], dict[str, str]]:
    """({} or what is not SERVING, the last health read) once all is SERVING or after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = await mesh.health()
        unhealthy = not_serving(health)
        if not unhealthy or time.monotonic() > deadline:
            return unhealthy, health
        await asyncio.sleep(0.5)


async def wait_recovered(
    mesh: ForgeUp, load: Load, fault: Fault, before: Pids, timeout_s: float
) -> tuple[float | None, dict[str, str]]:
    """When every service is SERVING again, with a new process where one was killed (the LLM
    service itself when its engine was), and, after a Milvus fault, a Search answers (the router
    has no health entry for Milvus); None if not within timeout_s."""
    deadline = time.monotonic() + timeout_s
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        if _replaced(mesh, fault, before):
            health = await mesh.health()
            if not not_serving(health) and (fault.target != "milvus" or await load.search_answers()):
                return time.monotonic(), health
        await asyncio.sleep(0.5)
    return None, health or await mesh.health()


def _replaced(mesh: ForgeUp, fault: Fault, before: Pids) -> bool:
    if fault.kind != "kill" or fault.target == "milvus":
        return True
    service = "llm" if fault.target == "engine" else fault.target
    now = mesh.service(service)
    return now is not None and now.pid != before.services[service]


async def _capacity_problems(mesh: ForgeUp) -> list[str]:
    """GetCapacity once the load has stopped: no session or queued request left."""
    deadline = time.monotonic() + CAPACITY_S
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            capacity = await mesh.capacity()
        except aio.AioRpcError as e:
            last = f"GetCapacity failed: {e.code().name} {e.details()}"
        else:
            if capacity.active_sessions == 0 and capacity.queued_requests == 0:
                return []
            last = f"{capacity.active_sessions} active sessions, {capacity.queued_requests} queued"
        await asyncio.sleep(0.5)
    return [f"{CAPACITY_S:.0f}s after the load stopped, GetCapacity says {last}"]


async def _orphans(mesh: ForgeUp) -> list[str]:
    """Processes the mesh ran that outlived their place under the supervisor's current children.
    Any found are reported, then killed (so the next round starts clean)."""
    deadline = time.monotonic() + ORPHANS_S
    while True:
        left = mesh.leftovers()
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)  # polls the process table: the OS sends no event for another's exit
    found = []
    for p in left:
        with contextlib.suppress(psutil.Error):
            found.append(f"pid {p.pid} {p.name()!r} ({' '.join(p.cmdline()[:4])})")
            p.kill()
    return [f"orphan processes {ORPHANS_S:.0f}s after recovery: {found}"] if found else []
