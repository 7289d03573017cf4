"""README's run command: `forge up` brings the whole mesh up health-gated (llm, embed, guardrails,
router with Milvus Lite); `forge ingest` and `forge ask` answer from the ingested documents with
citations, with the CLI's defaults, the way a new user runs them; a crashed service is restarted
(the router with its Milvus Lite data intact); Ctrl-C stops everything cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

import psutil
import pytest
from forge.v1 import embed_pb2, embed_pb2_grpc, ops_pb2, ops_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.main import MESH_SERVICES
from services.cli.supervisor import wait_serving
from services.common.gpu import read_gpu_snapshot
from services.common.security.settings import admin_key_path
from services.common.settings import DEFAULT_GRPC_PORTS
from tests.chaos.mesh import free_port_offset
from tests.helpers import REPO_ROOT, Completed, bearer, forge_test_home, mesh_dialer


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def mesh_env_without(*names: str) -> dict[str, str]:
    """forge up's environment: the shared test home (the model is converted and the guardrail heads
    trained once per checkout), less the named variables."""
    env = {**os.environ, "FORGE_HOME": str(forge_test_home()), "PYTHONUNBUFFERED": "1"}
    for name in names:
        env.pop(name, None)
    return env


async def start_mesh(
    env: dict[str, str], stderr: IO[bytes] | int = asyncio.subprocess.DEVNULL
) -> tuple[asyncio.subprocess.Process, int]:
    offset = free_port_offset()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "up",
        "--port-offset",
        str(offset),
        "--start-timeout",
        "120",
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        cwd=REPO_ROOT,
        env=env,
    )
    return proc, offset


async def stop_mesh(proc: asyncio.subprocess.Process, grace_s: float = 60) -> None:
    """Ctrl-C, as a user stops it: the router closes its Milvus Lite file cleanly for the next
    mesh on the same home. A mesh that does not stop within `grace_s` is killed, services too."""
    if proc.returncode is not None:
        return
    # The services run in their own sessions (Ctrl-C reaches only the supervisor), so a
    # mesh that would not stop must be killed service by service, not just the supervisor.
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    for member in family:
        if member.is_running():
            member.kill()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    stderr = (tmp_path / "forge-up.stderr").open("wb")  # a file: read by the test, never blocks
    proc, offset = await start_mesh(mesh_env_without(), stderr)
    yield proc, offset
    await stop_mesh(proc)
    stderr.close()


def mesh_logs_tail(lines_per_log: int = 15) -> str:
    """The end of each log `forge up` writes under the test home: what a failed start says."""
    logs = sorted((forge_test_home() / "logs").glob("*.log"))
    tails = []
    for log in logs:
        text = log.read_text(errors="replace").splitlines()[-lines_per_log:]
        tails.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(tails)


async def read_until(proc: asyncio.subprocess.Process, needle: str, timeout_s: float = 450) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), timeout_s)).decode()
        except TimeoutError:
            raise AssertionError(
                f"no {needle!r} from forge up within {timeout_s:.0f} s: {lines}\n{mesh_logs_tail()}"
            ) from None
        if not line:
            raise AssertionError(f"forge up ended before {needle!r}: {lines}\n{mesh_logs_tail()}")
        lines.append(line)
        if needle in line:
            return lines


async def run_forge(*args: str, env: dict[str, str] | None = None, timeout_s: float = 180) -> Completed:
    """A `forge` command as a user types it, with the test FORGE_HOME (where `forge up` put the
    admin key the CLI uses by default)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "FORGE_HOME": str(forge_test_home()), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


async def forge_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 180) -> str:
    """Run a `forge` client command; its stdout, after asserting it succeeded."""
    done = await run_forge(*args, env=env, timeout_s=timeout_s)
    assert done.returncode == 0, f"forge {' '.join(args)} failed: {done.stderr[-2000:]}"
    return done.stdout


def this_runs_log(service: str) -> str:
    """FORGE_HOME/logs/<service>.log from this forge up's first start of it on (the shared test
    home keeps earlier runs' logs above)."""
    text = (forge_test_home() / "logs" / f"{service}.log").read_text(errors="replace")
    starts = [m.start() for m in re.finditer(rf"^==== \S+ forge up: {service} start 1 \(pid", text, re.M)]
    assert starts, f"no start marker in {service}.log"
    return text[starts[-1] :]


def quiet_start(console: list[str], stderr: str) -> None:
    """What forge up printed up to its banner: a line per service as it served, no log line."""
    before = console[: next(i for i, line in enumerate(console) if line.startswith("Forge is up"))]
    serving = [line.split()[0] for line in before if re.match(r"  \S+ +SERVING  in \d+\.\d s$", line)]
    assert sorted(serving) == sorted(MESH_SERVICES), before
    logged = re.compile(r" (DEBUG|INFO|WARNING) |Recognizer not added")
    assert not [line for line in before if logged.search(line)], before
    assert not [line for line in stderr.splitlines() if logged.search(line)], stderr[-3000:]


def admin_metadata() -> tuple[tuple[str, str], ...]:
    return bearer(admin_key_path(forge_test_home()).read_text().strip())


async def service_pid(address: str, service: str) -> int:
    """The pid behind a port, from its OpsService: the router's with the admin key, the others'
    over mutual TLS with the operators' certificate."""
    metadata = admin_metadata() if service == "router" else ()
    channel = (
        aio.insecure_channel(address) if service == "router" else mesh_dialer().channel(address, service)
    )
    async with channel:
        stub = ops_pb2_grpc.OpsServiceStub(channel)
        info = await stub.GetInfo(ops_pb2.GetInfoRequest(), metadata=metadata, timeout=10)
        return int(info.pid)


async def test_forge_up_says_which_port_is_taken_instead_of_restarting_for_ever() -> None:
    offset = free_port_offset()
    router_port = DEFAULT_GRPC_PORTS["router"] + offset
    with socket.socket() as holder:  # another program listening on the router's port
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT too
        holder.bind(("127.0.0.1", router_port))
        holder.listen()
        result = await run_forge("up", "--port-offset", str(offset), timeout_s=120)
    assert result.returncode != 0
    assert f"router grpc 127.0.0.1:{router_port}" in result.stderr, result.stderr
    assert "--port-offset" in result.stderr and "Forge is up" not in result.stdout


# From cold (fresh clone) the mesh converts the model and trains the guardrail heads first.
@pytest.mark.timeout(900)
async def test_forge_up_serves_restarts_and_stops(
    mesh: tuple[asyncio.subprocess.Process, int], tmp_path: Path
) -> None:
    proc, offset = mesh
    banner = await read_until(proc, "Ctrl-C stops the mesh")
    address = f"127.0.0.1:{DEFAULT_GRPC_PORTS['embed'] + offset}"
    router = f"127.0.0.1:{DEFAULT_GRPC_PORTS['router'] + offset}"
    assert any(f"embed       grpc {address}" in line for line in banner)
    assert any(f"router      grpc {router}" in line for line in banner)
    home = forge_test_home()
    assert f"  admin key   {admin_key_path(home)} (the CLI's default key)\n" in banner, banner
    assert any(line.startswith(f"  logs        {home / 'logs'}/<service>.log") for line in banner), banner

    # Issue 17: a quiet start. The services' logs are in FORGE_HOME/logs, third-party chatter gone.
    quiet_start(banner, (tmp_path / "forge-up.stderr").read_text(errors="replace"))
    for service in MESH_SERVICES:
        assert f"INFO services.common.server: {service} serving" in this_runs_log(service), service
    assert "Recognizer not added" not in this_runs_log("guardrails")
    vllm_info = re.compile(r"^(\(\w+ pid=\d+\) )?INFO \d\d-\d\d ", re.M)  # vLLM's own log format
    assert not vllm_info.search(this_runs_log("llm")), this_runs_log("llm")[-3000:]

    # `forge status` on the whole mesh: every service SERVING, exit 0, the JSON scripts read.
    status = await run_forge("status", "--json", "--port-offset", str(offset))
    assert status.returncode == 0, status
    report = json.loads(status.stdout)
    assert report["ok"] is True and report["unreachable"] == [], report
    assert {name: s["health"] for name, s in report["services"].items()} == dict.fromkeys(
        MESH_SERVICES, "SERVING"
    ), report
    assert report["services"]["router"]["dependencies"]["llm"]["serving"] is True
    assert report["capacity"]["max_sessions"] == 4 and report["capacity"]["active_sessions"] == 0
    assert report["gpu"]["available"] is read_gpu_snapshot().available

    # A new user's first session: ingest this README and docs/, then ask everyday questions with
    # the CLI's defaults (answers up to the router's 256 tokens: paragraphs, lists, blank lines).
    # Issue 11: 11 of 12 such questions ended INVALID_ARGUMENT from the output rail.
    docs_tenant = f"e2e-docs-{offset}"
    ingested = await forge_cli("ingest", "README.md", "docs/", "--router", router, "--tenant", docs_tenant)
    assert re.search(r"ingested \d+ documents", ingested), ingested
    everyday = ["What is Forge?", "How do I run the tests?", "List the ports every service listens on."]
    answers = await asyncio.gather(
        *(forge_cli("ask", q, "--router", router, "--tenant", docs_tenant) for q in everyday)
    )
    for question, answer in zip(everyday, answers, strict=True):
        # forge_cli asserted the exit status; the answer is followed by its sources and usage.
        assert re.search(r"^\[1\] (README\.md|operations\.md) \(part \d+", answer, re.M), (question, answer)
        assert re.search(r"\(model \S+; \d+ prompt \+ [1-9]\d* answer tokens", answer), (question, answer)
        assert "[blocked]" not in answer and "[degraded]" not in answer, (question, answer)

    # Ingest their own files, ask about them, get the answer with its source.
    vault = "# The Zephyr vault\n\nThe access code for the Zephyr vault is 4417.\n"
    (tmp_path / "zephyr.md").write_text(vault)
    (tmp_path / "fern.txt").write_text("The Blue Fern greenhouse waters its orchids every Tuesday.\n")
    tenant = f"e2e-{offset}"
    ingested = await forge_cli("ingest", str(tmp_path), "--router", router, "--tenant", tenant)
    assert "ingested 2 documents" in ingested
    question = "What is the access code for the Zephyr vault?"
    answer = await forge_cli("ask", question, "--router", router, "--tenant", tenant)
    assert "4417" in answer and "[1] zephyr.md" in answer, answer

    # Keys decide the tenant: a tenant key made with the CLI reads its own documents only, and
    # may not name another tenant; without any key the router refuses.
    tenant_key = (await forge_cli("keys", "create", "--tenant", tenant)).strip()
    as_tenant = {"FORGE_API_KEY": tenant_key}
    answer = await forge_cli("ask", question, "--router", router, env=as_tenant)
    assert "[1] zephyr.md" in answer, answer
    spoofed = await run_forge("ask", question, "--router", router, "--tenant", docs_tenant, env=as_tenant)
    assert spoofed.returncode != 0 and "PERMISSION_DENIED" in spoofed.stderr, spoofed
    keyless = await run_forge(
        "ask", question, "--router", router, env={"FORGE_HOME": str(tmp_path / "nokey")}
    )
    assert keyless.returncode != 0 and "UNAUTHENTICATED" in keyless.stderr, keyless

    # The router crashes; `forge up` restarts it and its Milvus Lite data is still there.
    router_pid = await service_pid(router, "router")
    os.kill(router_pid, signal.SIGKILL)

    async def router_restarted() -> None:
        while True:
            await wait_serving(router, timeout_s=120)
            if await service_pid(router, "router") != router_pid:
                return

    await asyncio.wait_for(router_restarted(), 180)
    assert re.search(r"^==== \S+ forge up: router start 2 \(pid", this_runs_log("router"), re.M)
    answer = await forge_cli("ask", question, "--router", router, "--tenant", tenant)
    assert "[1] zephyr.md" in answer, answer

    async with mesh_dialer().channel(address, "embed") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reply = await embed_pb2_grpc.EmbedServiceStub(channel).Embed(embed_pb2.EmbedRequest(texts=["up"]))
        assert reply.dimension == 384

    first_pid = await service_pid(address, "embed")
    os.kill(first_pid, signal.SIGKILL)  # a crash, not a clean stop

    async def restarted() -> int:
        while True:
            await wait_serving(address, timeout_s=120, dialer=mesh_dialer(), service="embed")
            pid = await service_pid(address, "embed")
            if pid != first_pid:
                return pid

    second_pid = await asyncio.wait_for(restarted(), 180)
    assert pid_alive(second_pid)

    # The SIGKILLed embed and router were restarted: `forge up` said so on stderr (not read here).
    # Every process of the mesh now, the engine cores included: none may outlive the stop.
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) > len(MESH_SERVICES), "vLLM's engine core runs beside the four services"
    proc.send_signal(signal.SIGINT)
    await read_until(proc, "Forge stopped")
    assert await asyncio.wait_for(proc.wait(), 60) == 0
    assert not pid_alive(second_pid)
    left = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"left behind after stop: {left}"

    # Stopped: `forge status` says every service is unreachable and exits 1.
    status = await run_forge("status", "--json", "--port-offset", str(offset), "--timeout", "2")
    assert status.returncode == 1, status
    report = json.loads(status.stdout)
    assert report["ok"] is False and report["unreachable"] == list(MESH_SERVICES), report
