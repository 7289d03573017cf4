"""`forge up --routers 2`, the cluster's shape on one box, as a user runs it: two routers sharing a
Redis (one session limit) and a real Milvus server (PyPI `milvus` wheel); a document ingested
through one router is found by the other; Ctrl-C leaves no process of the mesh behind, Redis and
Milvus included. And when Redis or Milvus cannot start, forge up says so, stops what it started,
and exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from forge.v1 import ops_pb2, ops_pb2_grpc, router_pb2, router_pb2_grpc
from grpc import aio

from services.cli.main import MESH_SERVICES
from services.cli.redis_server import ping
from services.cli.replicas import milvus_port, redis_port, router_replicas
from services.common.security.settings import admin_key_path
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_HTTP_PORTS, DEFAULT_METRICS_PORTS
from tests.e2e.test_forge_up import forge_cli, read_until
from tests.helpers import REPO_ROOT, bearer, forge_test_home
from tests.integration.milvus_server import VENV, ServerVenvUnavailable, ensure_server_venv

ROUTERS = 2


def mesh_ports(offset: int, routers: int = ROUTERS) -> list[int]:
    """Every fixed port of a `forge up --routers N --port-offset offset`."""
    services = [p + offset for s in MESH_SERVICES for p in (DEFAULT_GRPC_PORTS[s], DEFAULT_METRICS_PORTS[s])]
    replicas = [p for r in router_replicas(routers, offset) for p in (r.port, r.metrics_port)]
    return [
        *services,
        *replicas,
        redis_port(offset),
        milvus_port(offset),
        DEFAULT_HTTP_PORTS["gateway"] + offset,
    ]


def free_offset() -> int:
    """A port offset whose every port is free now, within range (Redis's 6379 + offset above 1024)."""
    for _ in range(200):
        offset = random.randrange(-5000, 15000)
        if all(bindable(p) for p in mesh_ports(offset)):
            return offset
    raise RuntimeError("no port offset with every port free")


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def user_home(path: Path) -> Path:
    """A FORGE_HOME of its own (its own CA, keys and Milvus data), with the test home's prepared
    model and trained guardrail heads linked in so nothing is converted or trained again."""
    path.mkdir(parents=True, exist_ok=True)
    for prepared in ("models", "guardrails", "vllm-cache"):
        (forge_test_home() / prepared).mkdir(exist_ok=True)
        (path / prepared).symlink_to(forge_test_home() / prepared, target_is_directory=True)
    return path


def forge_env(home: Path) -> dict[str, str]:
    # The checkout's Milvus server venv, built once for every test (a user's goes under FORGE_HOME).
    return {
        **os.environ,
        "FORGE_HOME": str(home),
        "FORGE_MILVUS_SERVER_VENV": str(VENV),
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def milvus_venv() -> Path:
    try:
        return ensure_server_venv()
    except ServerVenvUnavailable as e:
        pytest.skip(f"no Milvus server for the routers to share: {e}")


@dataclass
class Mesh:
    proc: asyncio.subprocess.Process
    offset: int
    home: Path
    stderr: Path

    def router(self, index: int) -> str:
        return f"127.0.0.1:{router_replicas(ROUTERS, self.offset)[index].port}"


async def start_forge_up(home: Path, offset: int, stderr: Path, *args: str) -> asyncio.subprocess.Process:
    with stderr.open("wb") as err:  # a file: read by the test, never blocks
        return await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "services.cli", "up", "--port-offset", str(offset), *args),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=REPO_ROOT,
            env=forge_env(home),
        )


def kill_family(pid: int) -> None:
    """After a failed test: forge up and everything it started (Redis and Milvus in their own
    sessions, the services in theirs)."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        if member.is_running():
            member.kill()


@pytest.fixture(scope="module")
async def mesh(milvus_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    workdir = tmp_path_factory.mktemp("forge-up-routers")
    home, offset, stderr = user_home(workdir / "home"), free_offset(), workdir / "forge-up.stderr"
    proc = await start_forge_up(home, offset, stderr, "--routers", str(ROUTERS), "--start-timeout", "120")
    yield Mesh(proc, offset, home, stderr)
    if proc.returncode is None:
        kill_family(proc.pid)
        await proc.wait()


async def router_settings(address: str, home: Path) -> dict[str, str]:
    async with aio.insecure_channel(address) as channel:
        info = await ops_pb2_grpc.OpsServiceStub(channel).GetInfo(
            ops_pb2.GetInfoRequest(), metadata=bearer(admin_key_path(home).read_text().strip()), timeout=10
        )
    return dict(info.settings)


@pytest.mark.milvus_server
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_two_routers_share_documents_and_stop_with_redis_and_milvus(mesh: Mesh, tmp_path: Path) -> None:
    banner = await read_until(mesh.proc, "Ctrl-C stops the mesh")
    r0, r1 = mesh.router(0), mesh.router(1)
    redis_url = f"redis://127.0.0.1:{redis_port(mesh.offset)}/0"
    milvus_uri = f"http://127.0.0.1:{milvus_port(mesh.offset)}"
    serving = [line.split()[0] for line in banner if " SERVING  in " in line]
    assert sorted(serving) == sorted([*MESH_SERVICES, "router-1", "redis", "milvus"]), banner
    for line in (
        f"  router      grpc {r0}   ",
        f"  router-1    grpc {r1}   ",
        f"  redis       {redis_url} (the 2 routers' session limit)\n",
        f"  milvus      {milvus_uri} (the 2 routers' documents)\n",
        f"Try: forge ingest README.md --router {r0}; forge ask 'What is Forge?' --router {r1}\n",
    ):
        assert any(shown.startswith(line) for shown in banner), (line, banner)

    # Each replica runs with the shared Redis and Milvus server, under its own name.
    for address in (r0, r1):
        settings = await router_settings(address, mesh.home)
        assert settings["admission_url"] == redis_url and settings["admission_replicas"] == "2", settings
        assert settings["milvus_uri"] == milvus_uri, settings

    # Ingested through router 0, asked through router 1 with the CLI's defaults (its admin key).
    (tmp_path / "zephyr.md").write_text(
        "# The Zephyr vault\n\nThe access code for the Zephyr vault is 4417.\n"
    )
    env = {"FORGE_HOME": str(mesh.home)}
    ingested = await forge_cli("ingest", str(tmp_path / "zephyr.md"), "--router", r0, env=env)
    assert "ingested 1 documents" in ingested, ingested
    answer = await forge_cli("ask", "What is the access code for the Zephyr vault?", "--router", r1, env=env)
    assert "4417" in answer and "[1] zephyr.md" in answer, answer

    # Redis killed: forge up starts it again, and the routers go back to the shared limit.
    redis = next(
        p for p in psutil.Process(mesh.proc.pid).children(recursive=True) if p.name() == "redis-server"
    )
    redis.kill()
    admin = bearer(admin_key_path(mesh.home).read_text().strip())

    async def shared_again() -> bool:
        if "redis SERVING again" not in mesh.stderr.read_text():
            return False
        async with aio.insecure_channel(r1) as channel:
            capacity = await router_pb2_grpc.AdminServiceStub(channel).GetCapacity(
                router_pb2.GetCapacityRequest(), metadata=admin, timeout=10
            )
        return capacity.admission_mode == "shared"

    async with asyncio.timeout(60):
        while not await shared_again():  # noqa: ASYNC110 - another process's state, polled
            await asyncio.sleep(0.2)
    assert "redis exited (was killed by SIGKILL); restarting" in mesh.stderr.read_text()

    # Ctrl-C: the services, then Milvus, then Redis; no process of the mesh is left.
    family = psutil.Process(mesh.proc.pid).children(recursive=True)
    names = " ".join(p.name() for p in family)
    assert "redis-server" in names and "milvus" in names, names
    mesh.proc.send_signal(signal.SIGINT)
    after = await read_until(mesh.proc, "Forge stopped")
    assert [line for line in after if line.startswith("Stopping ")] == [
        "Stopping the Milvus server\n",
        "Stopping Redis\n",
    ], after
    assert await asyncio.wait_for(mesh.proc.wait(), 60) == 0
    left = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"left behind after stop: {left}"
    assert not ping("127.0.0.1", redis_port(mesh.offset))


@contextlib.contextmanager
def holding(port: int) -> Iterator[socket.socket]:
    """A listening socket on `port`: someone else's server there."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        yield taken


async def failed_start(tmp_path: Path, offset: int) -> tuple[int, str, list[str]]:
    """forge up --routers 2 that cannot start: its exit status, stderr, and what it left running."""
    home = user_home(tmp_path / "home")
    proc = await start_forge_up(home, offset, tmp_path / "stderr", "--routers", "2")
    try:
        await asyncio.wait_for(proc.communicate(), 180)
    finally:
        kill_family(proc.pid)
    assert proc.returncode is not None
    marks = (f"127.0.0.1:{redis_port(offset)}", str(home))
    left = []
    for p in psutil.process_iter():
        try:
            if any(mark in " ".join(p.cmdline()) for mark in marks):
                left.append(f"{p.pid} {p.name()}")
        except psutil.Error:
            continue
    return proc.returncode, (tmp_path / "stderr").read_text(errors="replace"), left


@pytest.mark.timeout(240)
async def test_a_taken_redis_port_is_a_clear_error(tmp_path: Path) -> None:
    offset = free_offset()
    with holding(redis_port(offset)):
        code, stderr, left = await failed_start(tmp_path, offset)
    said = f"Redis did not start: 127.0.0.1:{redis_port(offset)} is already taken"
    assert code == 1 and said in stderr, stderr
    assert not left, left


@pytest.mark.milvus_server
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_milvus_server_that_cannot_start_stops_redis_and_is_a_clear_error(
    milvus_venv: Path, tmp_path: Path
) -> None:
    offset = free_offset()
    with holding(milvus_port(offset)):
        code, stderr, left = await failed_start(tmp_path, offset)
    assert code == 1 and "the Milvus server did not start" in stderr, stderr
    assert not left, left
    assert bindable(redis_port(offset)), "Redis was left running"
