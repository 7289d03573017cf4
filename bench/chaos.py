"""Chaos rounds, many times: the chaos suite's faults (tests/chaos) repeated N rounds on one mesh
per backend, under the same light load of two tenants (a chat worker and an ingest worker each).

The mesh runs under the real supervisor (`forge up`) with the test FORGE_HOME; the Lite backend
gives the router a Milvus Lite file of its own, the server backend a real Milvus server from PyPI's
`milvus` 2.3.5 wheel (built once into .cache/, as the integration tests do), which this script
restarts on its data after killing it. Each round: the load runs, one process is killed (SIGKILL)
or frozen (SIGSTOP for 20 s, then SIGCONT), the mesh is waited on until every service (and every
router dependency entry) is SERVING again, the load stops, and every acknowledged document is
checked through Search.

Prints, per fault: rounds, time from the end of the fault (the SIGKILL, or the SIGCONT) to SERVING
again (p50 and max; after a Milvus fault, to a Search answering), calls that failed by status code
(UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED are allowed; anything else is a finding),
lost documents (acknowledged content gone, goal 0), mixed documents (two versions at once, goal 0)
and other findings, listed under the table.

    python bench/chaos.py [ROUNDS] [--backend lite|server|both] [--faults llm-kill,router-stop,...]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# _mesh puts the repository on sys.path: tests.chaos is importable after it.
from _mesh import install_stop_signals, model_line, percentile

from tests.chaos.faults import LITE_FAULTS, SERVER_FAULTS, Fault, RoundReport
from tests.chaos.harness import Chaos, open_chaos
from tests.chaos.milvus import RestartableMilvus
from tests.integration.milvus_server import ServerVenvUnavailable


@dataclass
class Tally:
    fault: Fault
    recovered_s: list[float] = field(default_factory=list)
    never: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    mixed: int = 0
    findings: list[str] = field(default_factory=list)
    rounds: int = 0

    def add(self, report: RoundReport) -> None:
        self.rounds += 1
        if report.recovered_s is None:
            self.never += 1
        else:
            self.recovered_s.append(report.recovered_s)
        self.failed.update({code: n for code, n in report.calls.items() if not code.endswith(" OK")})
        self.lost += report.lost
        self.mixed += report.mixed
        self.findings += [f"round {self.rounds}: {f}" for f in report.findings]


async def run_backend(
    backend: str, faults: list[Fault], rounds: int, workdir: Path, tallies: dict[str, Tally]
) -> str:
    """Every fault `rounds` times on one mesh; returns the environment line."""
    milvus: RestartableMilvus | None = None
    if backend == "server":
        milvus = RestartableMilvus(workdir / "milvus")
        await asyncio.to_thread(milvus.start)
        uri = milvus.uri
    else:
        uri = str(workdir / "chaos.db")
    try:
        async with open_chaos(workdir, uri, milvus) as chaos:
            env = await _env_line(chaos)
            for n in range(rounds):
                for fault in faults:
                    report = await chaos.round(fault)
                    tallies[fault.id].add(report)
                    recovered = "never" if report.recovered_s is None else f"{report.recovered_s:.1f}s"
                    print(
                        f"  {backend} round {n + 1}/{rounds} {fault.id}: SERVING again after {recovered}, "
                        f"{len(report.findings)} finding(s)",
                        file=sys.stderr,
                        flush=True,
                    )
            return env
    finally:
        if milvus is not None:
            milvus.stop()


async def _env_line(chaos: Chaos) -> str:
    mesh = chaos.mesh
    assert mesh.dialer is not None
    return await model_line(mesh.address("llm"), mesh.dialer)


def report(tallies: dict[str, Tally], rounds: int, envs: list[str]) -> None:
    for env in dict.fromkeys(envs):
        print(env)
    print(f"{rounds} round(s) of each fault; load: 2 tenants, each a chat worker and an ingest worker\n")
    header = (
        f"{'fault':<18} {'rounds':>6} {'SERVING p50':>12} {'max':>8} {'never':>6} "
        f"{'lost docs':>9} {'mixed':>6} {'findings':>9}  failed calls by code"
    )
    print(header)
    print("-" * len(header))
    for tally in tallies.values():
        if not tally.rounds:
            continue
        times = tally.recovered_s
        p50 = f"{percentile(times, 50):.1f} s" if times else "-"
        top = f"{max(times):.1f} s" if times else "-"
        failed = ", ".join(f"{code} {n}" for code, n in sorted(tally.failed.items())) or "none"
        print(
            f"{tally.fault.id:<18} {tally.rounds:>6} {p50:>12} {top:>8} {tally.never:>6} "
            f"{tally.lost:>9} {tally.mixed:>6} {len(tally.findings):>9}  {failed}"
        )
    lost = sum(t.lost for t in tallies.values())
    print(f"\nlost documents in all: {lost} (goal 0)")
    for tally in tallies.values():
        for finding in tally.findings[:10]:
            print(f"{tally.fault.id}: {finding}")


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rounds", type=int, nargs="?", default=3, help="rounds of each fault")
    parser.add_argument("--backend", choices=["lite", "server", "both"], default="both")
    parser.add_argument("--faults", default="", help="comma-separated fault ids (default: all)")
    args = parser.parse_args()
    install_stop_signals()
    wanted = {f for f in args.faults.split(",") if f}
    plan = {
        "lite": [f for f in LITE_FAULTS if not wanted or f.id in wanted],
        "server": [f for f in SERVER_FAULTS if not wanted or f.id in wanted],
    }
    backends = ["lite", "server"] if args.backend == "both" else [args.backend]
    tallies = {f.id: Tally(f) for b in backends for f in plan[b]}
    envs = []
    with tempfile.TemporaryDirectory(prefix="forge-chaos-") as tmp:
        for backend in backends:
            if not plan[backend]:
                continue
            (Path(tmp) / backend).mkdir()
            try:
                envs.append(
                    await run_backend(backend, plan[backend], args.rounds, Path(tmp) / backend, tallies)
                )
            except ServerVenvUnavailable as e:
                print(f"skipping the Milvus server rounds: {e}", file=sys.stderr)
    report(tallies, args.rounds, envs)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except (
        KeyboardInterrupt,
        asyncio.CancelledError,
    ):  # Ctrl-C / SIGTERM: the mesh was stopped on the way out
        sys.exit(130)
