"""The image and the registry-less compose stack for real: `make image`'s build on this machine,
`deploy/docker-compose.local.yaml` up until every health check says healthy, then a user's
`forge ingest` and `forge ask` through the router's published port with the stack's admin key,
GetGpuStats, the non-root user and read-only root filesystem the manifests promise, only
127.0.0.1 published, and `down` leaving nothing behind.

Needs a Docker engine: deploy/docker/engine.sh starts one where it can (root on Debian) and the
test is skipped, with engine.sh's reason, where it cannot. It builds the image, so it runs only
when asked: `make test-containers` (FORGE_CONTAINER_TESTS=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, REPO
from tests.helpers import free_port, grpcurl_path

DOCKER_DIR = DEPLOY / "docker"
COMPOSE_FILE = DEPLOY / "docker-compose.local.yaml"
FORGE_SERVICES = ("llm", "embed", "guardrails", "router", "gateway")
SERVICES = (*FORGE_SERVICES, "prometheus")
HEALTHY_WITHIN_S = 900

pytestmark = [
    # The first test's setup builds the image and waits for the stack.
    pytest.mark.timeout(3600),
    pytest.mark.slow,
    pytest.mark.containers,
    pytest.mark.skipif(
        os.environ.get("FORGE_CONTAINER_TESTS") != "1",
        reason="builds the image and runs the compose stack (several minutes): `make test-containers`",
    ),
]


def attempt(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command that may fail: the test looks at how."""
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False
    )


def run(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    done = attempt(*args, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def compose_command(docker: str) -> list[str]:
    """`docker compose` where the plugin is there, else Debian's docker-compose 1.29 (the one in
    the dev venv validates files only: its docker-py is too new to talk to an engine)."""
    if attempt(docker, "compose", "version", timeout=60).returncode == 0:
        return [docker, "compose"]
    for candidate in ("/usr/bin/docker-compose", shutil.which("docker-compose")):
        if candidate and Path(candidate).exists():
            return [candidate]
    pytest.skip("no docker compose: install the compose plugin or Debian's docker-compose")


@dataclass
class Stack:
    docker: str
    compose: list[str]
    project: str
    router: str
    gateway_port: int
    prometheus_port: int
    home: Path  # the CLI's FORGE_HOME: empty, so only FORGE_API_KEY gives it a key

    def __call__(self, *args: str, timeout: float = 600) -> str:
        return run(*self.compose_args(*args), timeout=timeout, env=self.env)

    def attempt(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return attempt(*self.compose_args(*args), timeout=timeout, env=self.env)

    def compose_args(self, *args: str) -> list[str]:
        return [*self.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args]

    @property
    def env(self) -> dict[str, str]:
        return {
            # docker-compose 1.29 gives up on an engine call after 60 s; creating a container of
            # a 4 GB image takes longer than that under the vfs storage driver.
            "COMPOSE_HTTP_TIMEOUT": "600",
            "FORGE_ROUTER_PUBLISH": self.router,
            "FORGE_GATEWAY_PUBLISH": f"127.0.0.1:{self.gateway_port}",
            "FORGE_PROMETHEUS_PUBLISH": f"127.0.0.1:{self.prometheus_port}",
        }

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip()

    def inspect(self, service: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(run(self.docker, "inspect", self.container(service)))
        return found[0]

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return [
            line
            for kind in ("ps -a", "volume ls", "network ls")
            for line in run(self.docker, *kind.split(), "-q", "--filter", label).split()
        ]


@pytest.fixture(scope="module")
def docker() -> str:
    engine = attempt(str(DOCKER_DIR / "engine.sh"))
    if engine.returncode != 0:
        pytest.skip(f"no Docker engine: {engine.stderr.strip()}")
    return engine.stdout.strip()


@pytest.fixture(scope="module")
def built(docker: str) -> None:
    """`make image`, as a user runs it (BuildKit's cache makes a rebuild with nothing changed
    short)."""
    run("make", "-C", str(REPO), "image", timeout=3600)


def wait_healthy(stack: Stack) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while True:
        states = {}
        for service in SERVICES:
            state = stack.inspect(service)["State"]
            states[service] = state.get("Health", {}).get("Status", state["Status"])
            if state["Status"] in ("exited", "dead") or states[service] == "unhealthy":
                logs = run(stack.docker, "logs", "--tail", "40", stack.container(service))
                pytest.fail(f"{service} is {states[service]} ({state['Status']}):\n{logs}")
        if all(status == "healthy" for status in states.values()):
            return
        assert time.monotonic() < deadline, f"not healthy in {HEALTHY_WITHIN_S} s: {states}"
        time.sleep(5)  # polling docker's own health state, not synchronising with the stack


@pytest.fixture(scope="module")
def stack(docker: str, built: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(
        docker=docker,
        compose=compose_command(docker),
        project=f"forge-ct-{uuid.uuid4().hex[:8]}",
        router=f"127.0.0.1:{free_port()}",
        gateway_port=free_port(),
        prometheus_port=free_port(),
        home=tmp_path_factory.mktemp("forge-home"),
    )
    try:
        stack("up", "-d", "--no-build")
        wait_healthy(stack)
        yield stack
    finally:
        stack.attempt("down", "-v", "--timeout", "45", timeout=300)


def cli(stack: Stack, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The forge CLI on this machine against the published router, with only `key` to present."""
    return attempt(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        "--router",
        stack.router,
        timeout=300,
        env={"FORGE_API_KEY": key, "FORGE_HOME": str(stack.home)},
    )


def forge(stack: Stack, key: str, *args: str) -> str:
    done = cli(stack, key, *args)
    assert done.returncode == 0, (
        f"forge {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def tenant_key(stack: Stack, tenant: str) -> str:
    """A tenant key made as docs/security.md says: `forge keys create` in forge-init's container,
    as the services' user, on the secrets volume; the router picks it up within seconds."""
    out = stack(
        "run",
        "--rm",
        "-T",
        "--no-deps",
        "--user",
        "10001:10001",
        "--entrypoint",
        "forge",
        "forge-init",
        "keys",
        "create",
        "--tenant",
        tenant,
    )
    return out.strip().splitlines()[-1]


def test_tenants_ingest_and_ask_through_the_published_router(stack: Stack, tmp_path: Path) -> None:
    acme, globex = tenant_key(stack, "acme"), tenant_key(stack, "globex")
    (tmp_path / "zephyr.md").write_text(
        "# The Zephyr vault\n\nThe access code for the Zephyr vault is 4417.\n"
    )
    deadline = time.monotonic() + 30
    while True:  # the router reloads the keys file on its own schedule (every few seconds)
        ingest = cli(stack, acme, "ingest", str(tmp_path / "zephyr.md"))
        if ingest.returncode == 0 or "UNAUTHENTICATED" not in ingest.stderr + ingest.stdout:
            break
        assert time.monotonic() < deadline, ingest
        time.sleep(1)
    assert ingest.returncode == 0 and "ingested 1 documents" in ingest.stdout, ingest
    answer = forge(stack, acme, "ask", "What is the access code for the Zephyr vault?")
    assert "4417" in answer and "[1] zephyr.md" in answer, answer
    # Another tenant's question does not reach acme's documents.
    other = forge(stack, globex, "ask", "What is the access code for the Zephyr vault?")
    assert "zephyr.md" not in other, other

    # A made-up key is refused: keys hold inside the containers too.
    refused = cli(stack, "fk_made_up", "ask", "What is the code?")
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stdout + refused.stderr, refused


def test_get_gpu_stats_answers_for_every_service_through_grpcurl(stack: Stack) -> None:
    key = stack("exec", "-T", "router", "cat", "/forge/keys/admin.key").strip()
    stats = json.loads(
        run(
            grpcurl_path(),
            "-plaintext",
            "-H",
            f"authorization: Bearer {key}",
            stack.router,
            "forge.v1.AdminService/GetGpuStats",
        )
    )
    assert stats, stats
    reported = json.dumps(stats)
    for service in ("llm", "embed", "guardrails"):
        assert service in reported, stats


def test_only_the_public_ports_are_published_and_only_on_loopback(stack: Stack) -> None:
    published = {service: stack.inspect(service)["NetworkSettings"]["Ports"] or {} for service in SERVICES}
    for service in ("llm", "embed", "guardrails"):
        assert not any(published[service].values()), (service, published[service])
    for service, port in (("router", "50051/tcp"), ("gateway", "8080/tcp"), ("prometheus", "9090/tcp")):
        bindings = published[service][port]
        assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings), (service, bindings)


def test_forge_runs_as_its_own_user_on_a_read_only_root(stack: Stack) -> None:
    for service in FORGE_SERVICES:
        info = stack.inspect(service)
        assert info["HostConfig"]["ReadonlyRootfs"] is True, service
        assert stack("exec", "-T", service, "id", "-u").strip() == "10001", service
        wrote = stack.attempt("exec", "-T", service, "touch", "/opt/forge/written", timeout=60)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr + wrote.stdout, (
            service,
            wrote,
        )


def test_prometheus_scrapes_every_forge_service(stack: Stack) -> None:
    deadline = time.monotonic() + 120
    while True:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{stack.prometheus_port}/api/v1/targets", timeout=10
        ) as r:
            targets = json.load(r)["data"]["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        if all(health.get(f"forge-{s}") == "up" for s in FORGE_SERVICES):
            return
        assert time.monotonic() < deadline, health
        time.sleep(5)  # the scrape interval is Prometheus' own; waiting for its next round


def test_down_leaves_nothing_running(stack: Stack) -> None:
    """Last in the file, on the whole stack: containers, volumes and network all go."""
    assert stack.leftovers()
    stack("down", "-v", "--timeout", "45")
    assert stack.leftovers() == []
