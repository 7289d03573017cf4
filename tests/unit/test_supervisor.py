"""The supervisor's decisions, as logic: crash-loop backoff, the words of a restart message, and
which processes count as what is left of a service. (tests/integration/test_supervisor*.py make
each fault happen to real processes.)"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys

import psutil
import pytest

from services.cli.supervisor import (
    FAILED_LINE,
    Backoff,
    Child,
    ChildSpec,
    RestartPolicy,
    Supervisor,
    describe_exit,
    session_members,
)
from services.common.config import load_profile
from services.common.server import EXIT_FATAL, ForgeServer, ServerOptions


def test_backoff_doubles_up_to_the_cap_on_quick_failures() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0, stable_run_s=60.0)
    assert [backoff.next_delay(0.0) for _ in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_backoff_starts_over_after_a_stable_run() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0, stable_run_s=60.0)
    for _ in range(5):
        backoff.next_delay(5.0)  # SERVING for 5 s each time: a crash loop
    assert backoff.next_delay(59.0) == 30.0
    assert backoff.next_delay(60.0) == 1.0  # it served a minute: a fresh failure, not the loop
    assert backoff.next_delay(0.0) == 2.0


def test_the_policy_defaults_ride_out_a_20s_freeze() -> None:
    policy = RestartPolicy()
    assert policy.liveness_timeout_s >= 3 * 20  # the chaos suite's 20 s SIGSTOP is no restart
    assert policy.backoff_initial_s == 1.0 and policy.backoff_max_s == 30.0
    assert policy.liveness_interval_s <= 5.0
    assert RestartPolicy(liveness_timeout_s=3.0).liveness_interval_s == 0.5


def test_the_supervisor_exit_code_is_the_server_kits() -> None:
    from services.cli import supervisor

    assert supervisor.EXIT_FATAL == EXIT_FATAL


def test_exit_descriptions_say_what_happened() -> None:
    assert describe_exit(3, "the vllm engine died") == (
        "exited with code 3 (engine or model died: the vllm engine died)"
    )
    assert describe_exit(3, None) == "exited with code 3 (engine or model died)"
    assert describe_exit(1, None) == "exited with code 1 (failed to start or crashed)"
    assert describe_exit(0, None) == "exited with code 0"
    assert describe_exit(-signal.SIGKILL, None) == "was killed by SIGKILL"


def test_a_restart_message_names_the_service_the_count_the_delay_and_the_last_log_lines() -> None:
    supervisor = Supervisor([ChildSpec("llm", "127.0.0.1", 1, 2)], {}, RestartPolicy(), say=print)
    child = supervisor.children[0]
    child.restarts = 4
    child.log_tail = collections.deque([f"line {i}" for i in range(10)])
    message = supervisor._restart_message(child, "exited with code 3 (engine or model died)", 8.0)
    assert message.startswith(
        "llm exited with code 3 (engine or model died) — restart 4 in 8 s; last log lines:"
    )
    assert message.splitlines()[1:] == [f"    line {i}" for i in range(5, 10)]
    quiet = Child(ChildSpec("embed", "127.0.0.1", 1, 2), restarts=1)
    assert supervisor._restart_message(quiet, "was killed by SIGKILL", 1.0) == (
        "embed was killed by SIGKILL — restart 1 in 1 s"
    )


def test_what_is_left_of_a_service_is_its_session_and_its_known_descendants() -> None:
    # A session leader with a child in its session, and one that left for a session of its own.
    code = (
        "import subprocess, sys, time;"
        "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True);"
        "print(a.pid, b.pid, flush=True); time.sleep(60)"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert leader.stdout is not None
        same, escaped = (int(p) for p in leader.stdout.readline().split())
        members = {p.pid for p in session_members(leader.pid)}
        assert members == {leader.pid, same}  # never this process, never the escaped one
        known = {escaped: psutil.Process(escaped).create_time()}
        assert {p.pid for p in session_members(leader.pid, known)} == {leader.pid, same, escaped}
        assert os.getpid() not in {p.pid for p in session_members(os.getsid(0))}
    finally:
        for pid in (leader.pid, same, escaped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leader.wait()


async def test_the_restart_message_reads_the_reason_the_server_kit_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The supervisor finds why a service failed in its log (its stdout is not a pipe: see
    Supervisor._spawn); the server kit's own wording must keep matching."""

    class App:
        name = "llm"
        grpc_service_names = ("forge.v1.LlmService",)

    server = ForgeServer(App(), load_profile("cpu", environ={}), ServerOptions())  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="services.common.server"):
        server.fail("the vllm engine died")
    await asyncio.gather(*server._background)  # the NOT_SERVING report it scheduled
    found = [m for r in caplog.records if (m := FAILED_LINE.search(r.getMessage()))]
    assert [m.group(1) for m in found] == ["the vllm engine died"]
