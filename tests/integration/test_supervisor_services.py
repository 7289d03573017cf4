"""The real services under `forge up`'s supervisor (the same ChildSpec commands `forge up` runs),
with faults made for real:

- llm: its vLLM engine core SIGKILLed while idle -> the llm process notices, drains and exits 3
  -> restarted, SERVING again, nothing left of the old one; then the llm process itself
  SIGKILLed -> its orphaned engine core is reaped before the restart; stop leaves nothing.
- embed: SIGKILLed -> restarted; SIGSTOPped past the liveness timeout -> killed and restarted.

Each prints its time to SERVING again (the numbers in docs/operations.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import psutil
import pytest

from services.cli.supervisor import Child, ChildSpec, RestartPolicy, Supervisor, child_env
from tests.helpers import forge_test_home, free_port, mesh_dialer, wait_until

pytestmark = pytest.mark.slow


@dataclass
class Supervised:
    supervisor: Supervisor
    child: Child
    said: list[str]
    sessions: list[int]

    def pid(self) -> int:
        assert self.child.process is not None
        return self.child.process.pid

    async def serving_again(self, old_pid: int, timeout_s: float) -> float:
        """Seconds until a new process is SERVING."""
        began = time.monotonic()
        await wait_until(
            lambda: self.child.serving.is_set() and self.pid() != old_pid, timeout_s, "a new process SERVING"
        )
        self.sessions.append(self.pid())
        return time.monotonic() - began


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def session_left(sid: int) -> list[int]:
    """Live processes of a service's session (its pid is the session id)."""
    left = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return left


@pytest.fixture
async def supervised() -> AsyncIterator[Callable[..., Supervised]]:
    runs: list[tuple[Supervised, asyncio.Task[None]]] = []

    def start(service: str, policy: RestartPolicy, env: dict[str, str] | None = None) -> Supervised:
        spec = ChildSpec(
            service, "127.0.0.1", free_port(), free_port(), env=env or {}, health_dialer=mesh_dialer()
        )
        said: list[str] = []
        supervisor = Supervisor([spec], child_env("cpu", str(forge_test_home())), policy, say=said.append)
        run = Supervised(supervisor, supervisor.children[0], said, [])
        runs.append((run, asyncio.create_task(supervisor.run())))
        return run

    yield start
    for run, _ in runs:
        run.supervisor.request_stop()
    await asyncio.wait_for(asyncio.gather(*(task for _, task in runs)), 120)
    for run, _ in runs:  # `forge up` stopped: nothing of any of its processes is left
        assert not [pid for sid in run.sessions for pid in session_left(sid)], run.sessions


def engine_cores(llm_pid: int) -> list[psutil.Process]:
    family = psutil.Process(llm_pid).children(recursive=True)
    cores = [p for p in family if "EngineCore" in " ".join([p.name(), *p.cmdline()])]
    return cores or family


@pytest.mark.timeout(1200)
async def test_llm_engine_death_and_sigkill_are_restarted_with_no_orphan(
    supervised: Callable[..., Supervised],
) -> None:
    policy = RestartPolicy(start_timeout_s=600, liveness_timeout_s=60, backoff_initial_s=0.5)
    run = supervised("llm", policy, env={"FORGE_LLM_MAX_NUM_SEQS": "2"})
    began = time.monotonic()
    await wait_until(lambda: run.child.serving.is_set(), 600, "llm SERVING")
    first = run.pid()
    run.sessions.append(first)
    print(f"llm: first start SERVING after {time.monotonic() - began:.1f} s")

    # The engine core dies while no call is in flight: the llm process notices, exits 3.
    cores = engine_cores(first)
    assert cores, "vLLM runs its engine core in a child process"
    for core in cores:
        core.kill()
    took = await run.serving_again(first, 600)
    assert run.said[0].startswith(
        "llm exited with code 3 (engine or model died: the vllm engine died) — restart 1 in 0.5 s"
    ), run.said
    assert run.said[1].startswith("llm is SERVING again, "), run.said
    assert not session_left(first) and not [c.pid for c in cores if alive(c)]
    print(f"llm: engine core SIGKILL -> SERVING again after {took:.1f} s")

    # The llm process itself is SIGKILLed: its engine core is orphaned, and must not survive.
    second = run.pid()
    orphans = engine_cores(second)
    os.kill(second, signal.SIGKILL)
    took = await run.serving_again(second, 600)
    assert run.said[2].startswith("llm was killed by SIGKILL — restart 2 in"), run.said
    assert not [c.pid for c in orphans if alive(c)] and not session_left(second)
    print(f"llm: llm process SIGKILL -> SERVING again after {took:.1f} s")


@pytest.mark.timeout(600)
async def test_embed_sigkill_and_a_long_freeze_are_restarted(supervised: Callable[..., Supervised]) -> None:
    policy = RestartPolicy(start_timeout_s=300, liveness_timeout_s=8, backoff_initial_s=0.5)
    run = supervised("embed", policy)
    began = time.monotonic()
    await wait_until(lambda: run.child.serving.is_set(), 300, "embed SERVING")
    first = run.pid()
    run.sessions.append(first)
    print(f"embed: first start SERVING after {time.monotonic() - began:.1f} s")

    os.kill(first, signal.SIGKILL)
    took = await run.serving_again(first, 300)
    assert run.said[0].startswith("embed was killed by SIGKILL — restart 1 in 0.5 s"), run.said
    assert not session_left(first)
    print(f"embed: SIGKILL -> SERVING again after {took:.1f} s")

    second = run.pid()
    os.kill(second, signal.SIGSTOP)  # frozen for good: killed after the liveness timeout
    took = await run.serving_again(second, 300)
    assert "embed stopped answering its health check for" in run.said[2], run.said
    assert not session_left(second)
    assert took >= 8
    print(f"embed: SIGSTOP -> SERVING again after {took:.1f} s (liveness timeout 8 s)")
