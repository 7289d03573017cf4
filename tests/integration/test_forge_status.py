"""`forge status` against real services: the real embeddings service and a real router (Milvus
Lite) in this process, the router's LLM and guardrails nowhere (their ports closed). The router
is NOT_SERVING and says it waits for them, embed SERVING with its model, the two absent services
unreachable (in the router's GPU ledger too), the router's capacity read; the command itself
(`forge status` and `--json`) exits 1. The whole mesh SERVING (exit 0) is in
tests/e2e/test_forge_up.py."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.cli.main import MESH_SERVICES
from services.cli.status_gather import UNREACHABLE, MeshStatus, Target, gather
from services.common.channels import PLAINTEXT
from services.common.config import load_profile
from services.common.gpu import read_gpu_snapshot
from services.common.server import ForgeServer, ServerOptions
from services.router.app import RouterApp
from services.router.settings import RouterSettings
from tests.helpers import REPO_ROOT, Completed, free_port

pytestmark = pytest.mark.slow


@dataclass
class HalfMesh:
    addresses: dict[str, str]

    def targets(self) -> list[Target]:
        return [Target(name, address, PLAINTEXT) for name, address in self.addresses.items()]


@pytest.fixture(scope="module")
async def half_mesh(
    embed_server: ForgeServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[HalfMesh]:
    closed = {"llm": f"127.0.0.1:{free_port()}", "guardrails": f"127.0.0.1:{free_port()}"}
    settings = RouterSettings(
        embed_address=embed_server.address,
        llm_address=closed["llm"],
        guardrails_address=closed["guardrails"],
    )
    app = RouterApp(load_profile("cpu", environ={}), tmp_path_factory.mktemp("router-home"), settings)
    router = ForgeServer(app, load_profile("cpu", environ={}), ServerOptions(port=0))
    await router.start()
    # It never serves (its LLM and guardrails are absent): load waits for them until cancelled.
    loading = asyncio.create_task(router.load_and_serve())
    try:
        yield HalfMesh({**closed, "embed": embed_server.address, "router": router.address})
    finally:
        loading.cancel()
        await router.stop()


async def status_once_embed_is_heard(mesh: HalfMesh) -> MeshStatus:
    """Until the router has heard embed SERVING (its first health answer), polled."""
    targets = mesh.targets()
    router = next(t for t in targets if t.name == "router")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        status = await gather(targets, router, timeout_s=3)
        by_name = {s.name: s for s in status.services}
        embed = by_name["router"].dependencies.get("embed")
        if embed is not None and embed.serving:
            return status
        assert loop.time() < deadline, f"the router never heard embed: {status}"
        await asyncio.sleep(0.2)


async def test_gather_shows_who_serves_who_waits_and_who_is_unreachable(half_mesh: HalfMesh) -> None:
    status = await status_once_embed_is_heard(half_mesh)
    by_name = {s.name: s for s in status.services}
    assert not status.ok
    embed, router = by_name["embed"], by_name["router"]
    assert (
        embed.health == "SERVING" and embed.runs and embed.pid == os.getpid() and embed.uptime_s is not None
    )
    assert router.health == "NOT_SERVING"
    assert {"llm", "guardrails"} <= set(router.waiting_for)  # milvus too while it opens
    assert not router.dependencies["llm"].serving and router.dependencies["embed"].serving
    for absent in ("llm", "guardrails"):
        assert by_name[absent].health == UNREACHABLE
        assert by_name[absent].error == "UNAVAILABLE: connection refused (nothing listens there)"
    assert status.capacity is not None and status.capacity.max_sessions == 4
    assert status.capacity.active_sessions == 0 and "SESSION_LIMIT" in status.capacity.rejected_total
    assert status.gpu is not None
    assert sorted(status.gpu.unreachable) == ["guardrails", "llm"]
    assert status.gpu.available == read_gpu_snapshot().available
    assert sorted(status.unreachable) == ["guardrails", "llm"]


async def forge_status(mesh: HalfMesh, home: Path, *args: str) -> Completed:
    """`forge status` as a user runs it, pointed at this mesh's ports (plaintext inside); the
    mesh's other services (the gateway) at closed ports."""
    closed = {s: f"127.0.0.1:{free_port()}" for s in MESH_SERVICES if s not in mesh.addresses}
    where = [f"--service={n}={a}" for n, a in {**mesh.addresses, **closed}.items() if n != "router"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "status",
        "--router",
        mesh.addresses["router"],
        *where,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "FORGE_INTERNAL_TLS": "off",
            "FORGE_HOME": str(home),
        },
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


async def test_the_command_exits_1_with_json_or_a_screen_saying_what_is_down(
    half_mesh: HalfMesh, tmp_path: Path
) -> None:
    await status_once_embed_is_heard(half_mesh)
    done = await forge_status(half_mesh, tmp_path, "--json")
    assert done.returncode == 1, done
    data = json.loads(done.stdout)
    assert data["ok"] is False
    assert list(data["services"]) == list(MESH_SERVICES)
    health = {name: s["health"] for name, s in data["services"].items()}
    assert health == {
        **dict.fromkeys(MESH_SERVICES, UNREACHABLE),
        "embed": "SERVING",
        "router": "NOT_SERVING",
    }
    assert data["capacity"]["max_sessions"] == 4
    assert set(data["unreachable"]) == {name for name, h in health.items() if h == UNREACHABLE}

    screen = await forge_status(half_mesh, tmp_path)
    assert screen.returncode == 1, screen
    assert "services not SERVING" in screen.stdout and "NOT_SERVING" in screen.stdout
    assert "waiting for" in screen.stdout and "Unreachable: " in screen.stdout
    assert "Sessions 0 / 4 in use (profile cpu)" in screen.stdout
