"""`forge up`'s supervisor against real processes that fail the ways services fail: a crash loop
(backoff to the cap, said plainly), a start stuck under SIGSTOP (killed with its family after the
start timeout, SIGTERM ignored: SIGKILL), a SIGSTOP shorter than the liveness timeout (ridden out)
and longer (killed, restarted), a SIGKILL (its grandchild reaped before the restart), and a stop
that leaves nothing behind.

The child is a small gRPC health server (real grpc.health.v1, real processes, real signals) with a
grandchild in its session, as a service has vLLM's engine core; the real services under the
supervisor are in test_supervisor_services.py."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from services.cli.supervisor import Child, ChildSpec, RestartPolicy, Supervisor
from tests.helpers import free_port, wait_until

# A "service": NOT_SERVING while "loading" (until the file `go` exists in its folder), then
# SERVING; it ignores SIGTERM (a hung drain) and keeps a grandchild in its session. With CRASH
# set it logs why, as the server kit does for a service whose engine died, and exits 3. With STEP
# set it logs the LLM service's model-conversion lines first.
SERVICE = r"""
import asyncio, os, signal, subprocess, sys, time
from pathlib import Path

folder, port = Path(sys.argv[1]), int(sys.argv[2])
(folder / "starts").open("a").write(f"{os.getpid()} {time.time()}\n")
print(f"INFO fake: starting as pid {os.getpid()}", file=sys.stderr, flush=True)
if os.environ.get("STEP"):
    print("INFO services.llm.app: no prepared model at /m; preparing it now", file=sys.stderr, flush=True)
    print("INFO services.llm.prepare: model prepared", file=sys.stderr, flush=True)
if os.environ.get("CRASH"):
    print("boom: the engine fell over", file=sys.stderr, flush=True)
    print("ERROR services.common.server: fake cannot serve any more: engine gone; draining and exiting",
          file=sys.stderr, flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

async def main():
    server = aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    (folder / f"listening-{os.getpid()}").write_text(str(grandchild.pid))
    while not (folder / "go").exists():
        await asyncio.sleep(0.02)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()

asyncio.run(main())
"""


@dataclass
class Fake(ChildSpec):
    folder: Path = Path()

    def command(self) -> list[str]:
        return [sys.executable, "-c", SERVICE, str(self.folder), str(self.port)]


@dataclass
class Run:
    supervisor: Supervisor
    child: Child
    said: list[str]
    folder: Path

    def pid(self) -> int:
        assert self.child.process is not None
        return self.child.process.pid

    def grandchild(self, pid: int) -> int:
        return int((self.folder / f"listening-{pid}").read_text())

    async def listening(self, pid: int) -> None:
        await wait_until(lambda: (self.folder / f"listening-{pid}").exists(), 60, f"pid {pid} listening")

    async def serving_again(self, old_pid: int, timeout_s: float = 60) -> int:
        await wait_until(
            lambda: self.child.serving.is_set() and self.pid() != old_pid, timeout_s, "a new process SERVING"
        )
        return self.pid()


def gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a parent that is not ours (init in a container may not reap)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def everyone(folder: Path) -> list[int]:
    """Every process the fake services of this test started: themselves and their grandchildren."""
    pids = [int(line.split()[0]) for line in (folder / "starts").read_text().splitlines()]
    grandchildren = [int(f.read_text()) for f in folder.glob("listening-*")]
    return pids + grandchildren


@dataclass
class Heard:
    """A reporter that keeps what forge up's console would show."""

    said: list[str]
    events: list[tuple[object, ...]] = field(default_factory=list)

    def say(self, message: str) -> None:
        self.said.append(message)

    def serving(self, service: str, after_s: float) -> None:
        self.events.append(("serving", service))

    def step_begun(self, service: str, what: str) -> None:
        self.events.append(("begun", service, what))

    def step_ended(self, service: str, what: str, took_s: float, finished: bool) -> None:
        self.events.append(("ended", service, what, finished))


@pytest.fixture
async def supervise(tmp_path: Path) -> AsyncIterator[Callable[..., Run]]:
    tasks: list[asyncio.Task[None]] = []
    runs: list[Run] = []

    def start(
        policy: RestartPolicy,
        env: dict[str, str] | None = None,
        logs_dir: Path | None = None,
        heard: Heard | None = None,
    ) -> Run:
        spec = Fake("fake", "127.0.0.1", free_port(), 0, env=env or {}, folder=tmp_path)
        said: list[str] = heard.said if heard is not None else []
        supervisor = Supervisor(
            [spec],
            dict(os.environ),
            policy,
            say=said.append,
            reporter=heard,
            logs_dir=logs_dir,
            echo_logs=logs_dir is None,
        )
        tasks.append(asyncio.create_task(supervisor.run()))
        run = Run(supervisor, supervisor.children[0], said, tmp_path)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.supervisor.request_stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    # Stopped: nothing the fake services started is left, whatever the test did to them.
    if (tmp_path / "starts").exists():
        leftovers = [pid for pid in everyone(tmp_path) if not gone(pid)]
        assert not leftovers, f"left behind: {leftovers}"


QUICK = RestartPolicy(start_timeout_s=30, liveness_timeout_s=0, stop_grace_s=1.0)


async def test_a_crash_loop_backs_off_to_the_cap_and_says_why(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    policy = RestartPolicy(start_timeout_s=30, backoff_initial_s=0.2, backoff_max_s=0.8)
    run = supervise(policy, env={"CRASH": "1"})
    await wait_until(lambda: len(run.said) >= 5, 60, "five restarts")
    run.supervisor.request_stop()
    first = run.said[0]
    assert first.startswith(
        "fake exited with code 3 (engine or model died: engine gone) — restart 1 in 0.2 s; last log lines:"
    ), first
    assert "    boom: the engine fell over" in first.splitlines()  # the last log lines
    delays = [float(re.search(r"restart \d+ in ([\d.]+) s", m).group(1)) for m in run.said[:5]]  # type: ignore[union-attr]
    assert delays == [0.2, 0.4, 0.8, 0.8, 0.8]
    # The waits happened: each start is at least its delay after the previous one.
    starts = [float(line.split()[1]) for line in (tmp_path / "starts").read_text().splitlines()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= delay for gap, delay in zip(gaps, delays, strict=False)), (gaps, delays)


async def test_a_start_stuck_under_sigstop_is_killed_with_its_family_and_restarted(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    policy = RestartPolicy(start_timeout_s=5, liveness_timeout_s=0, stop_grace_s=1.0, backoff_initial_s=0.1)
    run = supervise(policy)
    await wait_until(lambda: run.child.process is not None, 30, "the first start")
    first = run.pid()
    await run.listening(first)
    os.kill(first, signal.SIGSTOP)  # frozen while loading
    (tmp_path / "go").touch()  # loading would end now, for a process that runs
    spawned = run.child.started_at
    second = await run.serving_again(first)
    took = time.monotonic() - spawned
    assert run.said[0].startswith(
        "fake did not report SERVING within 5 s (stuck starting); killed it — restart 1 in 0.1 s"
    ), run.said
    # Killed with its grandchild: SIGCONT + SIGTERM (ignored), the grace, then SIGKILL.
    assert gone(first) and gone(run.grandchild(first))
    assert not gone(second) and run.child.restarts == 1
    assert took >= 5, took
    print(f"stuck start: SERVING again {took:.1f} s after the first start (start timeout 5 s)")


async def test_a_short_freeze_is_ridden_out_and_a_long_one_restarts(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "go").touch()
    policy = RestartPolicy(start_timeout_s=30, liveness_timeout_s=4, stop_grace_s=1.0, backoff_initial_s=0.1)
    run = supervise(policy)
    await wait_until(lambda: run.child.serving.is_set(), 60, "SERVING")
    first = run.pid()

    os.kill(first, signal.SIGSTOP)
    await asyncio.sleep(1.5)  # the fault: a freeze well within the liveness timeout
    os.kill(first, signal.SIGCONT)
    resumed = time.monotonic()
    await wait_until(lambda: run.child.answered_at > resumed, 30, "a health answer after SIGCONT")
    assert run.pid() == first and run.child.restarts == 0 and not run.said

    os.kill(first, signal.SIGSTOP)  # frozen for good
    frozen = time.monotonic()
    await run.serving_again(first)
    took = time.monotonic() - frozen
    assert re.match(
        r"fake stopped answering its health check for [45] s \(frozen\?\); killed it — restart 1 in 0\.1 s",
        run.said[0],
    ), run.said
    assert gone(first) and gone(run.grandchild(first))
    assert took >= 4, took
    print(f"frozen for good: SERVING again {took:.1f} s after the freeze (liveness timeout 4 s)")


async def test_a_sigkilled_service_leaves_no_orphan_and_stop_leaves_nothing(
    supervise: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "go").touch()
    run = supervise(QUICK)
    await wait_until(lambda: run.child.serving.is_set(), 60, "SERVING")
    first = run.pid()
    orphan = run.grandchild(first)
    os.kill(first, signal.SIGKILL)  # its grandchild is orphaned: the supervisor must reap it
    killed = time.monotonic()
    second = await run.serving_again(first)
    took = time.monotonic() - killed
    assert run.said[0].startswith("fake was killed by SIGKILL — restart 1 in 1 s"), run.said
    assert re.fullmatch(r"fake is SERVING again, \d+ s after it failed \(restart 1\)", run.said[1]), run.said
    assert gone(orphan)
    print(f"SIGKILL: SERVING again {took:.1f} s after the kill (backoff 1 s)")

    run.supervisor.request_stop()  # SIGTERM is ignored: the grace, then SIGKILL to the family
    await wait_until(lambda: gone(second) and gone(run.grandchild(second)), 30, "everything stopped")


async def test_each_start_is_appended_to_the_services_log_and_the_console_hears_serving_once(
    supervise: Callable[..., Run], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "go").touch()
    heard = Heard([])
    logs = tmp_path / "logs"
    run = supervise(QUICK, env={"STEP": "1"}, logs_dir=logs, heard=heard)
    await wait_until(lambda: run.child.serving.is_set(), 60, "SERVING")
    first = run.pid()
    os.kill(first, signal.SIGKILL)
    second = await run.serving_again(first)

    text = (logs / "fake.log").read_text()
    markers = re.findall(r"^==== \S+ forge up: fake start (\d) \(pid (\d+)\) ====$", text, re.M)
    assert markers == [("1", str(first)), ("2", str(second))], text
    # Each start's own lines follow its marker.
    assert (
        text.index(f"starting as pid {first}")
        < text.index("start 2")
        < text.index(f"starting as pid {second}")
    )
    step = "converting the model (first start only)"
    assert heard.events == [
        ("begun", "fake", step),
        ("ended", "fake", step, True),
        ("serving", "fake"),  # the first time only: the restart is said, not announced again
        ("begun", "fake", step),
        ("ended", "fake", step, True),
    ], heard.events
    assert heard.said[0].startswith("fake was killed by SIGKILL — restart 1 in 1 s; last log lines:")
    assert f"    INFO fake: starting as pid {first}" in heard.said[0].splitlines()
    assert "starting as pid" not in capfd.readouterr().err  # logs to the file only, not echoed
