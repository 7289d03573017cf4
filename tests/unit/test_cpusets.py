"""CPU sets (services/common/cpusets.py): the list syntax, the profile field, where each service
lands on machines bigger, smaller and more confined than the profile's box, the thread-pool
variables, and pinning every thread of a real process (in a child process: pinning this one
would pin the test session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.cli.plan import render_cpu_sets
from services.common.config import ConfigError, load_profile, load_profiles
from services.common.cpusets import (
    CPU_SET_SERVICES,
    THREAD_ENV,
    VLLM_BIND_ENV,
    CpuSetError,
    CpuSpec,
    Machine,
    apply,
    format_cpu_list,
    parse_cpu_list,
    place,
)
from tests.helpers import REPO_ROOT

SHIPPED = REPO_ROOT / "deploy" / "sku_profiles.yaml"


# --- the list syntax ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids", "open_from"),
    [
        ("0", {0}, None),
        (1, {1}, None),
        ("1-3", {1, 2, 3}, None),
        ("0,2", {0, 2}, None),
        (" 0 , 2-3 ", {0, 2, 3}, None),
        ("1-", set(), 1),
        ("0,4-", {0}, 4),
    ],
)
def test_parse_cpu_lists(text: str | int, ids: set[int], open_from: int | None) -> None:
    assert parse_cpu_list(text) == CpuSpec(frozenset(ids), open_from)


@pytest.mark.parametrize(
    ("text", "why"),
    [("", "empty"), ("a", "not a CPU id"), ("3-1", "backwards"), ("1--2", ">= 0"), ("0,,1", "not a CPU id")],
)
def test_bad_cpu_lists_say_why(text: str, why: str) -> None:
    with pytest.raises(CpuSetError, match=why):
        parse_cpu_list(text)


def test_format_is_linux_cpu_list_form_and_round_trips() -> None:
    assert format_cpu_list([3, 0, 1, 2, 6, 8, 9]) == "0-3,6,8-9"
    assert format_cpu_list([]) == ""
    for text in ("0", "1-3", "0,2", "0-1,4,6-7"):
        assert format_cpu_list(parse_cpu_list(text).ids) == text


def test_open_ended_sets_resolve_on_the_machine() -> None:
    spec = parse_cpu_list("1-")
    assert spec.needs_cpus == 2
    assert spec.resolve(range(2)) == {1}
    assert spec.resolve(range(8)) == set(range(1, 8))
    assert spec.resolve([0]) == set()


# --- the profile field --------------------------------------------------------------------------


def write_profile(tmp_path: Path, **cpu_sets: object) -> Path:
    path = tmp_path / "profiles.yaml"
    profile = {
        "device": {"name": "none", "memory_gib": 0},
        "slices": {},
        "admission": {"max_sessions": 2},
        "cpu_sets": cpu_sets,
    }
    path.write_text(yaml.safe_dump({"version": 1, "profiles": {"box": profile}}))
    return path


def test_profile_sets_are_validated_against_their_box(tmp_path: Path) -> None:
    good = {"host_cpus": 4, "router": 0, "guardrails": "1", "embed": "1", "llm": "2-3"}
    sets = load_profile("box", write_profile(tmp_path, **good), environ={}).cpu_sets
    assert sets.enabled and sets.of("router") == "0" and sets.of("llm") == "2-3"
    assert sets.of("milvus") is None  # Milvus Lite is the router's child, on the router's set
    assert sets.of("gateway") == "0"  # the router's front door runs on the router's CPUs
    with pytest.raises(ConfigError, match="llm: CPU set '2-4' needs 5 CPUs, host_cpus is 4"):
        load_profile("box", write_profile(tmp_path, **{**good, "llm": "2-4"}), environ={})
    with pytest.raises(ConfigError, match="missing embed"):
        load_profile(
            "box", write_profile(tmp_path, **{k: v for k, v in good.items() if k != "embed"}), environ={}
        )
    with pytest.raises(ConfigError, match=r"host_cpus .* is required"):
        load_profile(
            "box", write_profile(tmp_path, **{k: v for k, v in good.items() if k != "host_cpus"}), environ={}
        )
    with pytest.raises(ConfigError, match="router: CPU list 'x'"):
        load_profile("box", write_profile(tmp_path, **{**good, "router": "x"}), environ={})
    with pytest.raises(ConfigError, match="milvus"):  # unknown keys are refused, as everywhere
        load_profile("box", write_profile(tmp_path, **{**good, "milvus": "3"}), environ={})


@pytest.mark.parametrize("value", ["none", "null", "off"])
def test_none_turns_cpu_sets_off_from_the_environment(value: str) -> None:
    profile = load_profile("cpu", SHIPPED, environ={"FORGE_PROFILE__CPU_SETS": value})
    assert not profile.cpu_sets.enabled
    assert all(profile.cpu_sets.of(s) is None for s in CPU_SET_SERVICES)


def test_one_set_can_be_overridden_from_the_environment() -> None:
    profile = load_profile("h200", SHIPPED, environ={"FORGE_PROFILE__CPU_SETS__LLM": "6-13"})
    assert profile.cpu_sets.llm == "6-13" and profile.cpu_sets.router == "0-1"
    with pytest.raises(ConfigError, match="needs 17 CPUs, host_cpus is 16"):
        load_profile("h200", SHIPPED, environ={"FORGE_PROFILE__CPU_SETS__LLM": "6-16"})


def test_a_profile_without_cpu_sets_keeps_todays_behaviour(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yaml"
    bare = {"device": {"name": "none", "memory_gib": 0}, "slices": {}, "admission": {"max_sessions": 2}}
    path.write_text(yaml.safe_dump({"version": 1, "profiles": {"box": bare}}))
    profile = load_profile("box", path, environ={})
    assert not profile.cpu_sets.enabled
    placement = place("router", profile.cpu_sets.of("router"), Machine.of(range(4)))
    assert placement.cpus == set(range(4)) and not placement.pin
    assert placement.threads is None and placement.environment == {}


def test_shipped_cpu_profile_splits_two_cpus_as_the_issue_asks() -> None:
    cpu = load_profile("cpu", SHIPPED, environ={})
    two = Machine.of(range(2))
    where = {s: place(s, cpu.cpu_sets.of(s), two, cpu.cpu_sets.host_cpus) for s in CPU_SET_SERVICES}
    assert {s: format_cpu_list(p.cpus) for s, p in where.items()} == {
        "router": "0",
        "guardrails": "0",
        "embed": "0",
        "llm": "1",
    }
    assert all(p.pin and p.warning is None and p.threads == 1 for p in where.values())
    # On a bigger laptop the LLM takes the rest; the others stay on CPU 0.
    eight = place("llm", cpu.cpu_sets.llm, Machine.of(range(8)), cpu.cpu_sets.host_cpus)
    assert eight.cpus == set(range(1, 8)) and eight.threads == 7


@pytest.mark.parametrize("name", sorted(load_profiles(SHIPPED)))
def test_shipped_sets_fit_their_box_and_keep_the_llm_to_itself(name: str) -> None:
    sets = load_profiles(SHIPPED)[name].cpu_sets
    assert sets.enabled and sets.host_cpus is not None
    box = Machine.of(range(sets.host_cpus))
    cpus = {s: place(s, sets.of(s), box, sets.host_cpus).cpus for s in CPU_SET_SERVICES}
    assert all(p for p in cpus.values())
    others = cpus["router"] | cpus["guardrails"] | cpus["embed"]
    assert not cpus["llm"] & others, "the LLM's busy-wait must not share a CPU with the others"
    assert not cpus["router"] & (cpus["guardrails"] | cpus["embed"]) or sets.host_cpus <= 2


# --- placement on real-world machines -----------------------------------------------------------


def test_a_smaller_machine_degrades_with_a_warning_and_never_fails() -> None:
    """The h100 profile (26 CPUs) on a 2-CPU laptop: every service starts, on the CPUs there are."""
    h100 = load_profile("h100", SHIPPED, environ={}).cpu_sets
    laptop = Machine.of(range(2))
    router = place("router", h100.router, laptop, h100.host_cpus)
    assert router.cpus == {0, 1} and router.warning is not None and "2-3" in router.warning
    llm = place("llm", h100.llm, laptop, h100.host_cpus)
    assert llm.cpus == {0, 1} and not llm.pin
    assert llm.warning is not None and "assumes 26 CPUs" in llm.warning and "shared" in llm.warning
    assert llm.environment[VLLM_BIND_ENV] == "0"  # one CPU left to the engine core and the front


def test_an_outer_confinement_is_respected() -> None:
    # `taskset -c 0 forge up` on 2 CPUs: the LLM cannot have CPU 1.
    confined = Machine(online=frozenset({0, 1}), allowed=frozenset({0}))
    llm = place("llm", "1-", confined, 2)
    assert llm.cpus == {0} and not llm.pin and llm.warning is not None
    # A compose `cpuset` equal to the profile's: nothing more to do, nothing to warn about.
    container = Machine(online=frozenset(range(8)), allowed=frozenset({6, 7}))
    p40 = place("llm", "6-7", container, 8)
    assert p40.cpus == {6, 7} and not p40.pin and p40.warning is None


def test_in_kubernetes_the_kubelet_places_pods_and_threads_follow_the_quota() -> None:
    pod = Machine(
        online=frozenset(range(64)), allowed=frozenset(range(64)), in_kubernetes=True, cpu_quota=4.0
    )
    llm = place("llm", "8-17", pod, 26)
    assert not llm.pin and llm.cpus == set(range(64)) and llm.threads == 4
    assert "kubelet" in llm.note and llm.warning is None


def test_thread_pool_variables_per_service() -> None:
    embed = place("embed", "3-5", Machine.of(range(8)), 8)
    assert embed.environment == dict.fromkeys(THREAD_ENV, "3")
    llm = place("llm", "12-17", Machine.of(range(24)), 24)
    # vLLM sizes its own pools; its worker's OpenMP threads get the set less one CPU.
    assert llm.environment == {VLLM_BIND_ENV: "12-16", "RAYON_NUM_THREADS": "6"}
    assert "OMP_NUM_THREADS" not in llm.environment


def test_apply_keeps_what_the_operator_set() -> None:
    env = {"OMP_NUM_THREADS": "4"}
    placement = place("embed", "0", Machine(frozenset({0, 1}), frozenset({0})), 2)  # no pinning needed
    assert apply(placement, env) is None
    assert env["OMP_NUM_THREADS"] == "4" and env["MKL_NUM_THREADS"] == "1"


def test_machine_this_reads_online_cpus_and_the_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "devices/system/cpu").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/online").write_text("0-63\n")
    (tmp_path / "fs/cgroup").mkdir(parents=True)
    (tmp_path / "fs/cgroup/cpu.max").write_text("250000 100000\n")
    machine = Machine.this(environ={"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, sys_root=tmp_path)
    assert set(range(64)) <= machine.online and machine.in_kubernetes and machine.cpu_quota == 2.5
    assert machine.allowed == set(os.sched_getaffinity(0))


# --- `forge plan` -------------------------------------------------------------------------------


def test_plan_shows_the_sets_and_warns_on_a_smaller_machine() -> None:
    cpu = render_cpu_sets(load_profile("cpu", SHIPPED, environ={}), Machine.of(range(2)))
    assert "written for 2 CPUs" in cpu[0]
    assert any(line.split()[:3] == ["llm", "1-", "1"] and "vLLM OpenMP bind 1" in line for line in cpu)
    assert not any(line.startswith("warning") for line in cpu)
    thor = render_cpu_sets(load_profile("jetson_thor", SHIPPED, environ={}), Machine.of(range(2)))
    assert any("this machine has 2 CPUs, the profile's sets are written for 14" in line for line in thor)
    assert any("the LLM shares CPUs with" in line for line in thor)
    off = render_cpu_sets(
        load_profile("cpu", SHIPPED, environ={"FORGE_PROFILE__CPU_SETS": "none"}), Machine.of([0])
    )
    assert off[0].startswith("cpu sets     none")


# --- pinning a real process ---------------------------------------------------------------------

PIN_SCRIPT = """
import json, os, threading, time
from pathlib import Path
from services.common.cpusets import Machine, apply, place

stop = threading.Event()
early = threading.Thread(target=stop.wait)  # a thread started before pinning (gRPC's, BLAS's)
early.start()
machine = Machine.this()
placement = place("embed", str(min(machine.allowed)), machine, 1)
problem = apply(placement)
late = threading.Thread(target=stop.wait)  # and one after
late.start()
masks = {
    t.name: (t / "status").read_text().split("Cpus_allowed_list:")[1].split()[0]
    for t in Path("/proc/self/task").iterdir()
}
stop.set()
print(json.dumps({"problem": problem, "masks": masks, "omp": os.environ.get("OMP_NUM_THREADS")}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_apply_pins_every_thread_of_the_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    done = subprocess.run(
        [sys.executable, "-c", PIN_SCRIPT], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    first = str(min(os.sched_getaffinity(0)))
    assert result["problem"] is None
    assert len(result["masks"]) >= 3 and set(result["masks"].values()) == {first}
    assert result["omp"] == "1"


# --- deployment files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(load_profiles(SHIPPED)))
def test_compose_files_carry_each_services_fixed_set(name: str) -> None:
    """The generated compose files (tools/render_deploy.py) give each service its profile set as
    `cpuset`; an open-ended set ("1-") has no compose form and pins itself in the container."""
    sets = load_profiles(SHIPPED)[name].cpu_sets
    path = REPO_ROOT / "deploy" / ("docker-compose.cpu.yaml" if name == "cpu" else f"compose/{name}.yaml")
    services = yaml.safe_load(path.read_text())["services"]
    for service in CPU_SET_SERVICES:
        text = sets.of(service)
        assert text is not None
        expected = None if parse_cpu_list(text).open_from is not None else text
        assert services[service].get("cpuset") == expected, (name, service)
