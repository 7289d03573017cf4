"""Compose: every stack (the GPU base with each SKU override, each MPS variant, the cpu stack)
passes `docker-compose config` (docker-compose 1.29.2 validates against the compose schema without
an engine), and the merged result runs each service `forge up` runs with its profile, GPU and
health check; the security side (docs/security.md): the one-shot forge-init makes certificates and
keys before the services start, only the router (and the gateway, on loopback) is published, MinIO
has no default credentials."""

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

from services.cli.main import MESH_SERVICES
from services.common.config import GPU_SERVICES
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_HTTP_PORTS, DEFAULT_METRICS_PORTS
from tests.deploy.conftest import (
    DEPLOY,
    gateway_settings_from_env,
    gpu_profiles,
    llm_settings_from_env,
    mps_profiles,
    profile_from_env,
    profiles,
    render,
    router_settings_from_env,
    tool,
)

BASE = DEPLOY / "docker-compose.yaml"
CPU = DEPLOY / "docker-compose.cpu.yaml"
# Every service `forge up` starts (tests/deploy/test_services.py: each is in every stack).
FORGE = MESH_SERVICES
INTERNAL = ("llm", "embed", "guardrails")
# The services the GPU ledger attributes memory to (NVML by host PID); the gateway never uses the GPU.
ON_HOST_PID = (*GPU_SERVICES, "router")
INIT = "forge-init"
# What an operator sets before `up` (the stacks have no default for them).
MINIO_ENV = {"FORGE_MINIO_ACCESS_KEY": "forge-test-user", "FORGE_MINIO_SECRET_KEY": "forge-test-secret-1"}


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


def compose_config(
    files: Sequence[Path], cwd: Path | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` of the files, with the MinIO credentials set (unless `extra_env`
    says otherwise)."""
    command = [tool("docker-compose", "docker-compose==1.29.2")]
    for f in files:
        command += ["-f", str(f)]
    # A clean environment: no COMPOSE_FILE / DOCKER_HOST / FORGE_* from the caller's shell.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env.update(MINIO_ENV if extra_env is None else extra_env)
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
        expected = {*FORGE, INIT, "milvus", "prometheus", "otel-collector"}
        assert expected <= set(config["services"]), name


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
    # The one LLM takes every session the profile sizes its slice for (its own hard limit).
    llm = llm_settings_from_env(config["services"]["llm"]["environment"])
    assert llm.max_num_seqs == expected.admission.max_sessions


def test_one_router_with_admission_in_process(rendered: dict[str, dict[str, Any]]) -> None:
    """Compose is one box with one LLM: one router, whose in-process limit is the profile's
    max_sessions (that LLM's capacity); no Redis to share it with (docs/operations.md, "Scaling
    out": rehearse several routers with `forge up --routers N`, run them on Kubernetes)."""
    for name, config in rendered.items():
        services = config["services"]
        routers = [s for s, entry in services.items() if entry.get("command", [])[:2] == ["serve", "router"]]
        assert routers == ["router"], name
        settings = router_settings_from_env(services["router"]["environment"]).model_dump()
        assert settings.get("admission_url", "") == "", name
        assert not any("redis" in str(entry.get("image", "")) for entry in services.values()), name


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
    # NVML reports host PIDs: the ledger attributes memory only in the host PID namespace; the
    # rest (the gateway, public-facing) keep their own PID namespace and get no GPU.
    for service in FORGE:
        if service in ON_HOST_PID:
            assert services[service]["pid"] == "host", service
        else:
            assert "pid" not in services[service] and not _gpu_devices(services[service]), service
            assert "NVIDIA_DRIVER_CAPABILITIES" not in services[service]["environment"], service
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


def test_gateway_wiring(rendered: dict[str, dict[str, Any]]) -> None:
    """The gateway's environment, read by its own settings class (an unknown FORGE_GATEWAY_ name
    fails there): HTTP on every interface of the container at its default port, the router's
    public port (plaintext, as the router serves it here), embed and llm by compose name; it starts
    after the router and runs on the router's CPU set."""
    for name, config in rendered.items():
        services = config["services"]
        entry = services["gateway"]
        settings = gateway_settings_from_env(entry["environment"])
        assert (settings.http_host, settings.http_port) == ("0.0.0.0", DEFAULT_HTTP_PORTS["gateway"]), name
        for dep in ("router", "embed", "llm"):
            address = getattr(settings, f"{dep}_address")
            assert address == f"{dep}:{DEFAULT_GRPC_PORTS[dep]}", (name, dep)
            assert address.split(":")[0] in services, (name, dep)
        # TLS to the router exactly when the router serves its public port with TLS.
        router_tls = "FORGE_PUBLIC_TLS_CERT" in services["router"]["environment"]
        assert bool(settings.router_ca) == router_tls, name
        assert entry["depends_on"]["router"]["condition"] == "service_started", name
        assert entry.get("cpuset") == services["router"].get("cpuset"), name
        assert entry["image"] == services["router"]["image"], name


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


# --- Security (docs/security.md) ----------------------------------------------------------------


def _volumes(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (source, mode) of every mount (docker-compose 1.29 prints the short form
    SOURCE:TARGET[:MODE])."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = (volume["source"], "ro" if volume.get("read_only") else "rw")
        else:
            source, target, *mode = volume.split(":")
            out[target] = (source, mode[0] if mode else "rw")
    return out


def test_init_service_makes_certificates_and_keys_before_the_services(
    rendered: dict[str, dict[str, Any]],
) -> None:
    """forge-init (the Forge image, once) writes the CA, the certificates and the admin key into the
    volume forge-secrets; the four services wait for it to complete and read that volume only."""
    for name, config in rendered.items():
        services = config["services"]
        init = services[INIT]
        # The same image (and build target) as the four services: one image per stack.
        assert init["image"] == services["router"]["image"], name
        assert init["build"]["target"] == services["router"]["build"]["target"], name
        assert init.get("restart", "no") == "no", name
        assert not init.get("ports") and not _gpu_devices(init) and "pid" not in init, name
        script = " ".join(init["entrypoint"] + init["command"])
        assert "forge tls init" in script, name
        # Extra SANs would go on every certificate: "--san llm" would let the embed certificate
        # pass for llm. The defaults (<service>, forge-<service>) already are the compose names.
        assert "--san" not in script, name
        assert "forge keys create --tenant default --role admin" in script, name
        assert "/forge/keys/admin.key" in script and "chmod 0600 /forge/keys/admin.key" in script, name
        assert _volumes(init)["/forge"] == ("forge-secrets", "rw"), name
        assert init["environment"]["FORGE_TLS_DIR"] == "/forge/tls", name
        assert init["environment"]["FORGE_KEYS_FILE"] == "/forge/keys/keys.yaml", name
        assert "forge-secrets" in config["volumes"], name
        for service in FORGE:
            entry = services[service]
            assert entry["depends_on"][INIT]["condition"] == "service_completed_successfully", (name, service)
            assert _volumes(entry)["/forge"] == ("forge-secrets", "ro"), (name, service)
            env = entry["environment"]
            assert env["FORGE_TLS_DIR"] == init["environment"]["FORGE_TLS_DIR"], (name, service)
            assert env["FORGE_KEYS_FILE"] == init["environment"]["FORGE_KEYS_FILE"], (name, service)
            # Secure by default: nothing turns keys or mutual TLS off.
            assert env.get("FORGE_AUTH", "keys") == "keys", (name, service)
            assert env.get("FORGE_INTERNAL_TLS", "mtls") == "mtls", (name, service)
        # Nothing else gets the certificates and keys.
        for service in set(services) - {*FORGE, INIT}:
            sources = {source for source, _ in _volumes(services[service]).values()}
            assert "forge-secrets" not in sources, (name, service)


def _published(port: dict[str, Any] | str) -> tuple[str, int]:
    """(host IP, "" = every interface; container port) of a published port, in either form
    docker-compose 1.29 prints: a mapping, or "[HOST_IP:]PUBLISHED:TARGET[/PROTO]"."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), int(port["target"])
    parts = port.split("/")[0].rsplit(":", 2)
    host_ip = parts[0] if len(parts) == 3 else ""
    return host_ip, int(parts[-1])


def test_only_the_router_is_published(rendered: dict[str, dict[str, Any]]) -> None:
    """llm, embed and guardrails (and every metrics port, and the gateway's gRPC port) are
    reachable on the compose network only: the host gets the router's gRPC port, and the gateway's
    HTTP API, Prometheus and Jaeger on loopback only."""
    for name, config in rendered.items():
        services = config["services"]
        for service in (*INTERNAL, INIT):
            assert not services[service].get("ports"), (name, service)
        router = [_published(p) for p in services["router"]["ports"]]
        assert [target for _, target in router] == [DEFAULT_GRPC_PORTS["router"]], name
        # The gateway's HTTP API on the host's loopback, at its default port.
        http = DEFAULT_HTTP_PORTS["gateway"]
        (gateway,) = services["gateway"]["ports"]
        assert isinstance(gateway, str) and gateway.split("/")[0] == f"127.0.0.1:{http}:{http}", name
        for service, entry in services.items():
            if service == "router":
                continue
            for port in entry.get("ports", []):
                assert _published(port)[0] == "127.0.0.1", (name, service, port)


def test_minio_has_no_default_credentials(rendered: dict[str, dict[str, Any]]) -> None:
    """Without FORGE_MINIO_ACCESS_KEY / FORGE_MINIO_SECRET_KEY compose refuses every stack (no
    `minioadmin` fallback); with them, MinIO and Milvus both get exactly those."""
    for path in (BASE, CPU, *sorted((DEPLOY / "compose").glob("*.yaml"))):
        assert "minioadmin" not in path.read_text(), path

    def without_credentials(files: list[Path]) -> subprocess.CompletedProcess[str]:
        return compose_config(files, extra_env={})

    all_stacks = stacks()
    with ThreadPoolExecutor(max_workers=len(all_stacks)) as pool:
        bare = dict(zip(all_stacks, pool.map(without_credentials, all_stacks.values()), strict=True))
    for name, result in bare.items():
        assert result.returncode != 0, name
        assert "FORGE_MINIO_" in result.stderr, (name, result.stderr)
    for name, config in rendered.items():
        services = config["services"]
        if "minio" not in services:
            continue
        minio, milvus = services["minio"]["environment"], services["milvus"]["environment"]
        user, secret = MINIO_ENV["FORGE_MINIO_ACCESS_KEY"], MINIO_ENV["FORGE_MINIO_SECRET_KEY"]
        assert minio["MINIO_ROOT_USER"] == milvus["MINIO_ACCESS_KEY_ID"] == user, name
        assert minio["MINIO_ROOT_PASSWORD"] == milvus["MINIO_SECRET_ACCESS_KEY"] == secret, name
        # The deprecated names would override nothing, but must not carry a second credential.
        assert "MINIO_ACCESS_KEY" not in minio and "MINIO_SECRET_KEY" not in minio, name


LOCAL = DEPLOY / "docker-compose.local.yaml"
DOCKER_DIR = DEPLOY / "docker"


@pytest.fixture(scope="module")
def local_stack() -> dict[str, Any]:
    done = compose_config([LOCAL], extra_env={})
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_the_registry_less_stack_uses_only_images_built_here(local_stack: dict[str, Any]) -> None:
    """deploy/docker-compose.local.yaml runs where nothing can be pulled: every image is one
    `make image` builds (deploy/docker/build.sh names them), and nothing needs MinIO's keys."""
    build = (DOCKER_DIR / "build.sh").read_text()
    services = local_stack["services"]
    assert set(services) == {*FORGE, INIT, "prometheus"}
    for name, service in services.items():
        image = service["image"]
        if name == "prometheus":
            assert image == "forge-prometheus:0.1.0" and 'prometheus_image="forge-prometheus:' in build
        else:
            assert image == "forge-mesh:0.1.0-cpu" and '-cpu"' in build, name
        assert "build" not in service, name


def test_the_registry_less_stack_publishes_only_the_public_ports_on_loopback(
    local_stack: dict[str, Any],
) -> None:
    services = local_stack["services"]
    published = {name: [_published(p) for p in s.get("ports", [])] for name, s in services.items()}
    assert {name for name, ports in published.items() if ports} == {"router", "gateway", "prometheus"}
    for name in ("router", "gateway", "prometheus"):
        assert all(host == "127.0.0.1" for host, *_ in published[name]), (name, published[name])


def test_the_registry_less_stack_runs_forge_non_root_on_a_read_only_root(local_stack: dict[str, Any]) -> None:
    services = local_stack["services"]
    for name in FORGE:
        service = services[name]
        assert service["user"] == "10001:10001" and service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name
        assert service["depends_on"][INIT]["condition"] == "service_completed_successfully", name
        assert service["healthcheck"]["test"][:2] == ["CMD", "forge-healthcheck"], name
    # The router keeps Milvus Lite's file on a volume forge-init hands to uid 10001.
    router_env = services["router"]["environment"]
    lite = router_env["FORGE_ROUTER_MILVUS_URI"]
    assert lite.endswith(".db")
    assert any(v.split(":")[1] == str(Path(lite).parent) for v in services["router"]["volumes"] if ":" in v)
    assert (
        str(Path(lite).parent)
        in services[INIT]["command"][0].split("chown -R 10001:10001")[1].splitlines()[0]
    )
    assert services["prometheus"]["healthcheck"]["test"][0] == "CMD"
