"""`forge up` forks each service with gRPC loaded: gRPC's fork handlers are off in the CLI's
process (else core logs "skipping fork() handlers" on the console), not in the services."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from services.cli import FORK_SUPPORT_ENV, supervisor


def test_the_cli_process_runs_without_grpc_fork_handlers_and_its_services_get_the_callers_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert os.environ[FORK_SUPPORT_ENV] == "false"
    monkeypatch.setattr(supervisor, "CALLERS_FORK_SUPPORT", None)
    assert FORK_SUPPORT_ENV not in supervisor.child_env("cpu", "/tmp/home")
    monkeypatch.setattr(supervisor, "CALLERS_FORK_SUPPORT", "true")
    monkeypatch.setenv(FORK_SUPPORT_ENV, "true")
    assert supervisor.child_env("cpu", "/tmp/home")[FORK_SUPPORT_ENV] == "true"


def test_a_fork_beside_a_grpc_call_in_flight_logs_nothing_from_the_cli() -> None:
    """The real thing: a thread keeps gRPC busy while the CLI's process forks children."""
    script = """
import subprocess, threading
import services.cli  # as `forge` starts
import grpc

def busy():
    channel = grpc.insecure_channel("127.0.0.1:1")
    for _ in range(100):
        try:
            grpc.channel_ready_future(channel).result(timeout=0.01)
        except grpc.FutureTimeoutError:
            pass

thread = threading.Thread(target=busy)
thread.start()
for _ in range(20):
    subprocess.run(["true"], preexec_fn=lambda: None, check=True)
thread.join()
"""
    env = {k: v for k, v in os.environ.items() if k != FORK_SUPPORT_ENV}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "fork" not in done.stderr, done.stderr
