"""`forge up --routers N` as logic: each replica's name, ports and environment, and what the mesh's
processes are. (tests/e2e/test_forge_up_routers.py runs the mesh.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from services.cli.main import MESH_SERVICES, ROUTER_WAITS_FOR, mesh_specs
from services.cli.milvus_server import venv_dir, venv_ready
from services.cli.replicas import (
    RouterReplica,
    SharedBacking,
    milvus_port,
    redis_port,
    replica_env,
    router_replicas,
    shared_backing,
)
from services.common.channels import PLAINTEXT, Dialer
from services.common.config import load_profile

SHARED = SharedBacking("redis://127.0.0.1:6379/0", "http://127.0.0.1:19530")


def test_replica_i_serves_100_i_above_the_router_ports_plus_the_offset() -> None:
    assert router_replicas(3, port_offset=1000) == [
        RouterReplica("router", 51051, 10101),
        RouterReplica("router-1", 51151, 10201),
        RouterReplica("router-2", 51251, 10301),
    ]
    assert router_replicas(1) == [RouterReplica("router", 50051, 9101)]
    assert (redis_port(), milvus_port()) == (6379, 19530)
    assert (redis_port(1000), milvus_port(1000)) == (7379, 20530)


def test_no_replica_port_lands_on_another_service_or_another_replica() -> None:
    replicas = router_replicas(64, port_offset=1000)
    others = mesh_specs(load_profile("cpu", environ={}), "127.0.0.1", 1000, dialers(), replicas)
    ports = [p for s in others for p in (s.port, s.metrics_port)]
    assert len(ports) == len(set(ports)), "two processes on one port"
    assert redis_port(1000) not in ports and milvus_port(1000) not in ports
    with pytest.raises(ValueError):
        router_replicas(0)


def test_each_replica_is_told_what_it_shares_and_its_own_name() -> None:
    replica = RouterReplica("router-1", 50151, 9201)
    assert replica_env(replica, 2, SHARED.admission_url, SHARED.milvus_uri) == {
        "FORGE_ROUTER_ADMISSION_URL": "redis://127.0.0.1:6379/0",
        "FORGE_ROUTER_ADMISSION_REPLICAS": "2",
        "FORGE_ROUTER_REPLICA_ID": "router-1",
        "FORGE_ROUTER_MILVUS_URI": "http://127.0.0.1:19530",
    }


def dialers() -> dict[str, Dialer]:
    return dict.fromkeys(MESH_SERVICES, PLAINTEXT)


def test_one_router_is_todays_mesh() -> None:
    specs = mesh_specs(load_profile("cpu", environ={}), "127.0.0.1", 0, dialers(), router_replicas(1))
    assert [s.service for s in specs] == list(MESH_SERVICES)
    router = next(s for s in specs if s.service == "router")
    assert (router.port, router.metrics_port, router.after, router.env) == (50051, 9101, ROUTER_WAITS_FOR, {})
    assert router.command()[:3] == [sys.executable, "-m", "services.router"]


def test_replicas_run_the_router_with_its_certificate_name_and_wait_for_its_dependencies() -> None:
    router_dialer = Dialer()  # told apart from the others' by identity
    chosen = {**dialers(), "router": router_dialer}
    specs = mesh_specs(
        load_profile("cpu", environ={}), "127.0.0.1", 1000, chosen, router_replicas(2, 1000), SHARED
    )
    assert [s.service for s in specs] == ["llm", "embed", "guardrails", "router", "router-1", "gateway"]
    for name, port in (("router", 51051), ("router-1", 51151)):
        spec = next(s for s in specs if s.service == name)
        assert spec.runs == "router" and spec.port == port and spec.address == f"127.0.0.1:{port}"
        assert spec.command()[:3] == [sys.executable, "-m", "services.router"]
        assert spec.health_dialer is router_dialer and spec.after == ROUTER_WAITS_FOR
        assert spec.env["FORGE_ROUTER_REPLICA_ID"] == name
        assert spec.env["FORGE_ROUTER_ADMISSION_REPLICAS"] == "2"
        assert spec.env["FORGE_ROUTER_MILVUS_URI"] == SHARED.milvus_uri
    assert all("FORGE_ROUTER_REPLICA_ID" not in s.env for s in specs if s.runs != "router")


def test_replicas_use_a_redis_or_milvus_server_the_operator_names_and_start_the_rest() -> None:
    assert shared_backing(2, {}) == SharedBacking("", "")
    named = {
        "FORGE_ROUTER_ADMISSION_URL": "redis://cache:6379/2",
        "FORGE_ROUTER_MILVUS_URI": "http://m:19530",
    }
    assert shared_backing(3, named) == SharedBacking("redis://cache:6379/2", "http://m:19530")


def test_replicas_refuse_a_milvus_lite_file_they_cannot_share() -> None:
    with pytest.raises(
        ValueError, match=r"Milvus Lite, which one router owns: 2 routers need a Milvus server"
    ):
        shared_backing(2, {"FORGE_ROUTER_MILVUS_URI": "/data/forge.db"})


def test_the_milvus_server_venv_is_under_forge_home_unless_named(tmp_path: Path) -> None:
    assert venv_dir(tmp_path, {}) == tmp_path / "milvus-server-venv"
    assert venv_dir(tmp_path, {"FORGE_MILVUS_SERVER_VENV": "/opt/milvus"}) == Path("/opt/milvus")


def test_a_half_built_milvus_server_venv_is_not_ready(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "milvus-server").touch()
    assert not venv_ready(tmp_path)  # pip was interrupted: no ready mark
    (tmp_path / ".forge-ready").write_text("milvus==2.3.5\n")
    assert venv_ready(tmp_path)
