"""Every service `forge up` starts is deployed everywhere the others are: in each compose stack
(with a Prometheus job), in the kustomize base (Deployment, Service, NetworkPolicy, disruption
budget, its certificate Secret, in cert-manager too) and in the image's exposed ports. The list
comes from the code, so the next service fails here until the deployment files know it. Reads
the files directly (no docker-compose or kubectl), so it runs wherever the tests do."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.main import MESH_SERVICES
from services.common.security.tls import SERVICES as TLS_SERVICES
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_HTTP_PORTS, DEFAULT_METRICS_PORTS
from tests.deploy.conftest import DEPLOY, REPO, gpu_profiles, mps_profiles, profiles, render, yaml_docs

K8S_BASE = DEPLOY / "k8s" / "base"


def test_the_code_agrees_on_the_services() -> None:
    """`forge up`'s list, the services with a certificate, the port tables and the generator's list
    are the same services (the generator writes each one's profile into every SKU file)."""
    services = set(MESH_SERVICES)
    assert services == set(TLS_SERVICES)
    assert services == set(DEFAULT_GRPC_PORTS) == set(DEFAULT_METRICS_PORTS)
    assert set(DEFAULT_HTTP_PORTS) <= services
    assert services == set(render.FORGE_SERVICES)


def compose_files() -> dict[str, Path]:
    out = {"base": DEPLOY / "docker-compose.yaml", "cpu": DEPLOY / "docker-compose.cpu.yaml"}
    out |= {name: DEPLOY / "compose" / f"{name}.yaml" for name in gpu_profiles()}
    out |= {f"{name}.mps": DEPLOY / "compose" / f"{name}.mps.yaml" for name in mps_profiles()}
    return out


@pytest.mark.parametrize("stack", sorted(compose_files()))
def test_every_service_is_in_every_compose_file(stack: str) -> None:
    services: dict[str, Any] = yaml.safe_load(compose_files()[stack].read_text())["services"]
    missing = [s for s in MESH_SERVICES if s not in services]
    assert not missing, f"{stack}: no compose service for {missing}"
    if stack in ("base", "cpu"):  # the stacks themselves: each service runs `forge serve <it>`
        for service in MESH_SERVICES:
            assert services[service]["command"][:2] == ["serve", service], (stack, service)
    else:  # the SKU overrides: each service gets the profile
        for service in MESH_SERVICES:
            assert "FORGE_PROFILE__ISOLATION" in services[service]["environment"], (stack, service)


@pytest.mark.parametrize("name", sorted(profiles()))
def test_the_gateway_runs_on_the_routers_cpu_set(name: str) -> None:
    """CPU sets: the gateway shares the router's (services/common/cpusets.py), in compose too."""
    path = DEPLOY / ("docker-compose.cpu.yaml" if name == "cpu" else f"compose/{name}.yaml")
    services = yaml.safe_load(path.read_text())["services"]
    assert services["gateway"].get("cpuset") == services["router"].get("cpuset")
    if profiles()[name].cpu_sets.enabled:
        assert "gateway on the router's" in path.read_text().split("\nservices:", 1)[0]


def test_prometheus_has_a_job_per_service() -> None:
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    for service in MESH_SERVICES:
        assert jobs.get(f"forge-{service}") == [f"{service}:{DEFAULT_METRICS_PORTS[service]}"], service


def base_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    return [obj for r in kustomization["resources"] for obj in yaml_docs((K8S_BASE / r).read_text())]


def names(objects: list[dict[str, Any]], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objects if o["kind"] == kind}


def test_every_service_is_in_the_kustomize_base() -> None:
    objects = base_objects()
    for kind in ("Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"):
        missing = [s for s in MESH_SERVICES if f"forge-{s}" not in names(objects, kind)]
        assert not missing, f"no {kind} for {missing}"
    deployments: dict[str, Any] = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for service in MESH_SERVICES:
        pod = deployments[f"forge-{service}"]["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["args"][:2] == ["serve", service], service
        # Scraped like the others (the pod annotations a Prometheus discovers pods by).
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(DEFAULT_METRICS_PORTS[service])
        secrets = {
            source["secret"]["name"]
            for volume in pod["spec"]["volumes"]
            for source in volume.get("projected", {}).get("sources", [])
        }
        assert f"forge-tls-{service}" in secrets, service


def test_every_service_has_a_cert_manager_certificate() -> None:
    folder = DEPLOY / "k8s" / "cert-manager"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = [
        obj for r in kustomization["resources"] for obj in yaml_docs((folder / r).read_text())
    ]
    secrets = {o["spec"]["secretName"] for o in objects if o["kind"] == "Certificate"}
    assert {f"forge-tls-{s}" for s in (*MESH_SERVICES, "client")} <= secrets


def test_the_image_exposes_every_port() -> None:
    ports = {p for s in MESH_SERVICES for p in (DEFAULT_GRPC_PORTS[s], DEFAULT_METRICS_PORTS[s])}
    ports |= set(DEFAULT_HTTP_PORTS.values())
    exposes = re.findall(r"^EXPOSE (.+)$", (DEPLOY / "docker" / "Dockerfile").read_text(), re.MULTILINE)
    assert len(exposes) == 3  # one per target
    for line in exposes:
        assert {int(p) for p in line.split()} == ports


def test_the_image_carries_every_package_of_the_wheel() -> None:
    """install.sh installs the project from /src: each package the wheel ships (pyproject) is
    copied there in every stage that runs it whole, and mounted there in every step that installs
    Forge on its own (the cpu target) (forge_client: the CLI's ingest and ask use it)."""
    with (REPO / "pyproject.toml").open("rb") as f:
        packages = tomllib.load(f)["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--from)(\S+) /src/(\S+)$", dockerfile, re.MULTILINE)
    mounts = re.findall(r"--mount=type=bind,source=([^\s,]+),target=/src/([^\s,]+)", dockerfile)
    stages_that_copy_sources = dockerfile.count("COPY pyproject.toml README.md /src/")
    steps_that_mount_sources = dockerfile.count("FORGE_INSTALL_PHASE=forge")
    assert stages_that_copy_sources >= 1 and steps_that_mount_sources >= 1
    for package in packages:
        top = package.split("/")[0]
        assert copies.count((top, top)) == stages_that_copy_sources, package
        assert mounts.count((top, top)) == steps_that_mount_sources, package
