"""CPU sets on real processes: the four services started as `forge up` starts them (`forge serve
<name>` each, secure defaults, profile `cpu`) run every thread on their profile set, read back
from /proc/<pid>/task/<tid>/status (Cpus_allowed_list), children included: vLLM's engine core and
worker under the llm service, the Milvus Lite server under the router. GetInfo reports the set.
`cpu_sets: none` keeps today's behaviour (no pinning).

On a 2-CPU machine: router, guardrails and embed on CPU 0, the LLM on CPU 1. Elsewhere the
expected sets come from the same placement the services use (services/common/cpusets.py). One
llm start (1-3 min on a 2-CPU box) for the whole file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from forge.v1 import ops_pb2, ops_pb2_grpc

from services.common.config import load_profile
from services.common.cpusets import (
    CPU_SET_SERVICES,
    THREAD_ENV,
    VLLM_BIND_ENV,
    Machine,
    format_cpu_list,
    parse_cpu_list,
    place,
)
from tests.helpers import ServiceProcess, admin_key, bearer, forge_test_home

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc"),
]

START_S = 300.0
THREAD_VARIABLES = (*THREAD_ENV, VLLM_BIND_ENV)


def thread_masks(pid: int) -> dict[int, str]:
    """Every live thread of the process -> its Cpus_allowed_list."""
    masks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError):  # a thread that ended meanwhile
            status = (task / "status").read_text()
            masks[int(task.name)] = status.split("Cpus_allowed_list:")[1].split()[0]
    return masks


def process_tree(pid: int) -> list[int]:
    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


def expected_cpus(service: str, env: dict[str, str]) -> frozenset[int]:
    """Where the service should run: the placement it computes itself, from the profile it loads
    (this test process has the affinity the services inherit)."""
    sets = load_profile(
        "cpu", environ={k: v for k, v in env.items() if k.startswith("FORGE_PROFILE")}
    ).cpu_sets
    return place(service, sets.of(service), Machine.this(env), sets.host_cpus).cpus


def service_env(**extra: str) -> dict[str, str]:
    return {"FORGE_HOME": str(forge_test_home()), "FORGE_PROFILE": "cpu", **extra}


def serve(service: str, env: dict[str, str]) -> ServiceProcess:
    process = ServiceProcess(service, env=env)
    # The caller's own CPU-set overrides and thread-pool variables would change what is checked.
    for name in list(process.env):
        if (name.startswith("FORGE_PROFILE__CPU_SETS") and name not in env) or name in THREAD_VARIABLES:
            del process.env[name]
    return process


@pytest.fixture(scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, ServiceProcess]]:
    env = service_env(FORGE_LLM_MAX_NUM_SEQS="2")
    processes = {s: serve(s, env) for s in ("llm", "embed", "guardrails")}
    try:
        for process in processes.values():
            await process.start()
        router_env = {
            **env,
            "FORGE_ROUTER_MILVUS_URI": str(tmp_path_factory.mktemp("cpusets") / "milvus.db"),
            **{
                f"FORGE_ROUTER_{s.upper()}_ADDRESS": f"127.0.0.1:{processes[s].port}"
                for s in ("llm", "embed", "guardrails")
            },
        }
        processes["router"] = serve("router", router_env)
        await processes["router"].start()
        for process in processes.values():
            await process.next_event("serving", timeout_s=START_S)
        yield processes
    finally:
        for process in processes.values():
            await stop(process)


async def stop(process: ServiceProcess) -> None:
    """Kill the service's own children first (vLLM's engine core and worker, Milvus Lite): they
    hold its stdout, and asyncio's wait() returns only once that pipe closes."""
    if process.proc is None:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(process.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    await process.kill()


async def test_each_service_and_its_children_run_on_its_set(mesh: dict[str, ServiceProcess]) -> None:
    env = service_env()
    seen = {}
    for service, process in mesh.items():
        assert process.proc is not None
        expected = expected_cpus(service, env)
        tree = process_tree(process.proc.pid)
        if service in ("llm", "router"):
            assert len(tree) > 1, f"{service} should have a child (vLLM's engine core; Milvus Lite)"
        own = thread_masks(tree[0])
        assert set(own.values()) == {format_cpu_list(expected)}, (service, own)
        for child in tree[1:]:
            for tid, mask in thread_masks(child).items():
                # vLLM binds its worker's OpenMP threads within the set (VLLM_CPU_OMP_THREADS_BIND).
                assert parse_cpu_list(mask).ids <= expected, (service, child, tid, mask)
        seen[service] = expected
    if len(os.sched_getaffinity(0)) >= 2:
        # The point of it: the LLM's busy-wait never shares a CPU with the router.
        assert not seen["llm"] & (seen["router"] | seen["embed"] | seen["guardrails"]), seen
    if os.sched_getaffinity(0) == {0, 1}:  # this project's 2-CPU box: the split
        assert {s: format_cpu_list(c) for s, c in seen.items()} == {
            "llm": "1",
            "embed": "0",
            "guardrails": "0",
            "router": "0",
        }


async def test_get_info_reports_the_cpus(mesh: dict[str, ServiceProcess]) -> None:
    env = service_env()
    admin = bearer(admin_key(forge_test_home()))
    for service in CPU_SET_SERVICES:
        async with mesh[service].channel() as channel:
            info = await ops_pb2_grpc.OpsServiceStub(channel).GetInfo(
                ops_pb2.GetInfoRequest(), metadata=admin if service == "router" else (), timeout=10
            )
        assert info.settings["cpus"] == format_cpu_list(expected_cpus(service, env)), service


async def test_cpu_sets_none_keeps_todays_behaviour() -> None:
    process = serve("embed", service_env(FORGE_PROFILE__CPU_SETS="none"))
    try:
        await process.start()
        assert process.proc is not None
        everywhere = format_cpu_list(os.sched_getaffinity(0))
        assert set(thread_masks(process.proc.pid).values()) == {everywhere}
        async with process.channel() as channel:
            info = await ops_pb2_grpc.OpsServiceStub(channel).GetInfo(ops_pb2.GetInfoRequest(), timeout=30)
        assert info.settings["cpus"] == everywhere
    finally:
        await stop(process)
