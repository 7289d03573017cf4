"""Compose: every stack (the GPU base with each SKU override, each MPS variant, the cpu stack)
passes `docker-compose config` (docker-compose 1.29.2 validates against the compose schema without
an engine), and the merged result runs each service with its profile, GPU and health check."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import GPU_SERVICES
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS
from tests.deploy.conftest import DEPLOY, gpu_profiles, mps_profiles, profile_from_env, profiles, render, tool

BASE = DEPLOY / "docker-compose.yaml"
CPU = DEPLOY / "docker-compose.cpu.yaml"
FORGE = ("llm", "embed", "guardrails", "router")


def stacks() -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {"base": [BASE], "cpu": [CPU]}
    for name in gpu_profiles():
        out[name] = [BASE, DEPLOY / "compose" / f"{name}.yaml"]
    for name in mps_profiles():
        out[f"{name}.mps"] = [
            BASE,
            DEPLOY / "compose" / f"{name}.yaml",
            DEPLOY / "compose" / f"{name}.mps.yaml",
        ]
    return out


def compose_config(files: Sequence[Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [tool("docker-compose", "docker-compose==1.29.2")]
    for f in files:
        command += ["-f", str(f)]
    # A clean environment: no COMPOSE_FILE / DOCKER_HOST / FORGE_* from the caller's shell.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [*command, "config"], capture_output=True, text=True, env=env, cwd=cwd or DEPLOY, timeout=120
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, Any]]:
    """`docker-compose config` of every stack, run concurrently (about a second each)."""
    tool("docker-compose", "docker-compose==1.29.2")
    all_stacks = stacks()
    with ThreadPoolExecutor(max_workers=len(all_stacks)) as pool:
        results = dict(zip(all_stacks, pool.map(compose_config, all_stacks.values()), strict=True))
    failed = {k: r.stderr for k, r in results.items() if r.returncode != 0}
    assert not failed, f"docker-compose config failed: {failed}"
    return {name: yaml.safe_load(r.stdout) for name, r in results.items()}


def test_every_stack_is_valid_compose(rendered: dict[str, dict[str, Any]]) -> None:
    assert set(rendered) == set(stacks())
    for name, config in rendered.items():
        assert {"llm", "embed", "guardrails", "router", "milvus", "prometheus", "otel-collector"} <= set(
            config["services"]
        ), name


def test_docker_compose_rejects_what_the_schema_does_not_know(tmp_path: Path) -> None:
    """The negative control: the validator in use does validate."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("services:\n  llm:\n    image: forge-mesh:x\n    gpus_please: 1\n")
    result = compose_config([bad], cwd=tmp_path)
    assert result.returncode != 0
    assert "gpus_please" in result.stderr


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return list(devices)


def _profile_of(service: dict[str, Any]) -> Any:
    env = {k: str(v) for k, v in service["environment"].items()}
    return profile_from_env(env)


@pytest.mark.parametrize("name", sorted(profiles()))
def test_every_sku_stack_runs_its_profile(rendered: dict[str, dict[str, Any]], name: str) -> None:
    """What each container would load (FORGE_PROFILE + the FORGE_PROFILE__ variables, read by the
    services' own loader) is the profile: slices, buffer, max_sessions."""
    expected = profiles()[name]
    config = rendered["cpu" if name == "cpu" else name]
    for service in FORGE:
        loaded = _profile_of(config["services"][service])
        assert loaded.name == name
        assert loaded.slices == expected.slices, service
        assert loaded.buffer == expected.buffer, service
        assert loaded.admission.max_sessions == expected.admission.max_sessions, service


@pytest.mark.parametrize("name", gpu_profiles())
def test_gpu_goes_to_the_services_with_a_slice(rendered: dict[str, dict[str, Any]], name: str) -> None:
    profile = profiles()[name]
    services = rendered[name]["services"]
    for service in GPU_SERVICES:
        devices = _gpu_devices(services[service])
        wants_gpu = service == "llm" or profile.slices.of(service) > 0
        assert bool(devices) == wants_gpu, service
        for device in devices:
            assert device["driver"] == "nvidia" and device["count"] == 1 and "gpu" in device["capabilities"]
    # The router reads NVML for the ledger and never computes on the GPU.
    assert services["router"]["environment"]["NVIDIA_DRIVER_CAPABILITIES"] == "utility"
    # Seed option 5: Milvus and its etcd/object store run on the CPU.
    for service in ("milvus", "etcd", "minio"):
        assert not _gpu_devices(services[service])
    # NVML reports host PIDs: the ledger attributes memory only in the host PID namespace.
    for service in FORGE:
        assert services[service]["pid"] == "host"
    target = render.image_target(profile)
    assert {services[s]["image"] for s in FORGE} == {f"forge-mesh:{render.forge_version()}-{target}"}
    assert {services[s]["build"]["target"] for s in FORGE} == {target}


def test_cpu_stack_has_no_gpu(rendered: dict[str, dict[str, Any]]) -> None:
    services = rendered["cpu"]["services"]
    for name, service in services.items():
        assert not _gpu_devices(service), name
        assert "NVIDIA_DRIVER_CAPABILITIES" not in service.get("environment", {}), name
    assert {services[s]["image"] for s in FORGE} == {f"forge-mesh:{render.forge_version()}-cpu"}


@pytest.mark.parametrize("name", mps_profiles())
def test_mps_variant(rendered: dict[str, dict[str, Any]], name: str) -> None:
    services = rendered[f"{name}.mps"]["services"]
    daemon = services["mps-daemon"]
    assert daemon["ipc"] == "host" and _gpu_devices(daemon)
    assert daemon["command"] == ["nvidia-cuda-mps-control", "-f"]
    pipe = daemon["environment"]["CUDA_MPS_PIPE_DIRECTORY"]
    assert any(v.startswith(f"forge-mps-pipe:{pipe}") for v in daemon["volumes"])
    profile = render.mps_profile(name, render.raw_profiles()[name])
    for service in FORGE:
        entry = services[service]
        assert _profile_of(entry).isolation.value == "mps"
        if service in GPU_SERVICES and profile.slices.of(service) > 0:
            assert entry["ipc"] == "host"
            assert entry["environment"]["CUDA_MPS_PIPE_DIRECTORY"] == pipe
            assert any(v.startswith(f"forge-mps-pipe:{pipe}") for v in entry["volumes"])
            assert entry["depends_on"]["mps-daemon"]["condition"] == "service_healthy"
            assert re.fullmatch(r"0=\d+M", entry["environment"]["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"])
        else:
            assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in entry["environment"]


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (docker-compose 1.29 prints the
    short form SOURCE:TARGET[:MODE]; a named volume's source is not a path)."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume["source"], volume["target"]
        else:
            source, target = volume.split(":")[:2]
        if source.startswith("/"):
            mounts[target] = Path(source)
    return mounts


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_ports_health_checks_and_router_wiring(rendered: dict[str, dict[str, Any]]) -> None:
    for config in rendered.values():
        services = config["services"]
        for service in FORGE:
            entry = services[service]
            port = _flag(entry["command"], "--port")
            assert entry["command"][:2] == ["serve", service]
            assert port == str(DEFAULT_GRPC_PORTS[service])
            assert _flag(entry["command"], "--metrics-port") == str(DEFAULT_METRICS_PORTS[service])
            assert _flag(entry["command"], "--host") == "0.0.0.0"
            assert entry["healthcheck"]["test"] == ["CMD", "forge-healthcheck", port]
        router_env = services["router"]["environment"]
        for dep in ("llm", "embed", "guardrails"):
            assert router_env[f"FORGE_ROUTER_{dep.upper()}_ADDRESS"] == f"{dep}:{DEFAULT_GRPC_PORTS[dep]}"
        assert router_env["FORGE_ROUTER_MILVUS_URI"] == "http://milvus:19530"
        assert services["router"]["depends_on"]["milvus"]["condition"] == "service_healthy"
        assert services["router"]["ports"][0]["target"] == 50051


def test_images_are_pinned(rendered: dict[str, dict[str, Any]]) -> None:
    for config in rendered.values():
        for name, service in config["services"].items():
            image = service["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), (name, image)


def test_prometheus_scrapes_every_service_and_loads_the_alert_rules(
    rendered: dict[str, dict[str, Any]],
) -> None:
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    for service in FORGE:
        assert jobs[f"forge-{service}"] == [f"{service}:{DEFAULT_METRICS_PORTS[service]}"]
    # The rules file is mounted from deploy/prometheus/ at the path prometheus.yml names.
    mounts = _bind_mounts(rendered["base"]["services"]["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == DEPLOY / "compose" / "prometheus.yml"
    for rule_file in prom["rule_files"]:
        relative = Path(rule_file).relative_to("/etc/prometheus/rules")
        assert (mounts["/etc/prometheus/rules"] / relative).is_file(), rule_file
    assert mounts["/etc/prometheus/rules"] == DEPLOY / "prometheus"


def test_otel_collector_pipeline_is_wired(rendered: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((DEPLOY / "compose" / "otel-collector.yaml").read_text())
    traces = config["service"]["pipelines"]["traces"]
    assert set(traces["receivers"]) <= set(config["receivers"])
    assert set(traces["processors"]) <= set(config["processors"])
    assert set(traces["exporters"]) <= set(config["exporters"])
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    jaeger = config["exporters"]["otlp/jaeger"]["endpoint"]
    assert jaeger.split(":")[0] in rendered["base"]["services"]
    services = rendered["base"]["services"]
    for service in FORGE:
        assert services[service]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    mounts = _bind_mounts(services["otel-collector"])
    assert mounts["/etc/otelcol-contrib/config.yaml"] == DEPLOY / "compose" / "otel-collector.yaml"
