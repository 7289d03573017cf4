"""The shape `forge up --routers N` gives the cluster on one box: N router replicas, replica i on
port 50051 + 100·i (metrics 9101 + 100·i), all sharing one session limit through a Redis (port
6379) and one vector store in a Milvus server (port 19530), every port moved by --port-offset.
Pure: ports, names and each replica's environment; main.py starts the processes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS

ROUTER = "router"
# Between two replicas' ports: room for a hundred other services' ports in between.
REPLICA_PORT_STEP = 100
REDIS_PORT = 6379
MILVUS_PORT = 19530
# The router's settings (services/router/settings.py, prefix FORGE_ROUTER_) a replica is given.
ADMISSION_URL_ENV = "FORGE_ROUTER_ADMISSION_URL"
ADMISSION_REPLICAS_ENV = "FORGE_ROUTER_ADMISSION_REPLICAS"
REPLICA_ID_ENV = "FORGE_ROUTER_REPLICA_ID"
MILVUS_URI_ENV = "FORGE_ROUTER_MILVUS_URI"


@dataclass(frozen=True)
class RouterReplica:
    name: str  # "router" for replica 0 (what the gateway and the CLI default to), then "router-1"...
    port: int
    metrics_port: int


def replica_name(index: int) -> str:
    return ROUTER if index == 0 else f"{ROUTER}-{index}"


def router_replicas(count: int, port_offset: int = 0) -> list[RouterReplica]:
    if count < 1:
        raise ValueError(f"at least one router, not {count}")
    return [
        RouterReplica(
            replica_name(i),
            DEFAULT_GRPC_PORTS[ROUTER] + REPLICA_PORT_STEP * i + port_offset,
            DEFAULT_METRICS_PORTS[ROUTER] + REPLICA_PORT_STEP * i + port_offset,
        )
        for i in range(count)
    ]


def redis_port(port_offset: int = 0) -> int:
    return REDIS_PORT + port_offset


def milvus_port(port_offset: int = 0) -> int:
    return MILVUS_PORT + port_offset


def replica_env(replica: RouterReplica, count: int, admission_url: str, milvus_uri: str) -> dict[str, str]:
    """What one of `count` replicas sharing `admission_url` (Redis) and `milvus_uri` is told."""
    return {
        ADMISSION_URL_ENV: admission_url,
        ADMISSION_REPLICAS_ENV: str(count),
        REPLICA_ID_ENV: replica.name,
        MILVUS_URI_ENV: milvus_uri,
    }


@dataclass(frozen=True)
class SharedBacking:
    """What the replicas share: each a URI to use as it is, or "" = `forge up` starts one."""

    admission_url: str
    milvus_uri: str
    # forge up's own Redis when it started one (main.KeptRedis: restarted when it exits).
    redis: Any = None


def shared_backing(count: int, environ: Mapping[str, str]) -> SharedBacking:
    """A Redis or a Milvus server the operator already names (FORGE_ROUTER_ADMISSION_URL,
    FORGE_ROUTER_MILVUS_URI) is used; what is not named is started. Milvus Lite is one process's
    file: several replicas cannot share it (ValueError)."""
    if count < 2:
        raise ValueError("one router shares nothing: no Redis, its own Milvus")
    milvus = environ.get(MILVUS_URI_ENV, "")
    # As the router tells them apart (services/router/clients/milvus_store.py): a .db path is Lite.
    if milvus and "://" not in milvus and milvus.endswith(".db"):
        raise ValueError(
            f"{MILVUS_URI_ENV}={milvus} is Milvus Lite, which one router owns: {count} routers need "
            "a Milvus server (unset it and `forge up` starts one)"
        )
    return SharedBacking(environ.get(ADMISSION_URL_ENV, ""), milvus)
