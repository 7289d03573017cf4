"""CPU sets: which logical CPUs each Forge process runs on, beside its GPU slice.

On an appliance the CPU is shared as surely as the GPU. vLLM's CPU worker busy-waits on its
shared-memory queue for a second after every engine step (`busy_loop_s`, not a setting), so
unpinned, one core spins whenever the LLM is busy and the router's event loop, embed and guardrails
queue behind it. A profile's `cpu_sets` give each service its own CPUs; each service pins itself at
start (every thread, with `os.sched_setaffinity`; children inherit it: vLLM's engine core and
worker, the router's Milvus Lite server) and sizes its thread pools to its set.

Set syntax, as Linux writes CPU lists (`taskset -c`, `Cpus_allowed_list`): "0", "1-3", "0,2-3";
and "N-" = CPU N to the machine's last online CPU (a profile for "any machine with at least N+1
CPUs", such as `cpu` for CI and laptops).

Where the sets meet the machine (`place`):
  - the CPUs a set names that this process may use (online and in its affinity) are its CPUs;
  - none of them (a laptop with fewer CPUs than the profile's box, a `taskset` around `forge up`):
    the process keeps every CPU it may use, with a warning; starting never fails over CPUs;
  - in a Kubernetes pod Forge does not pin: the kubelet's CPU manager places pods (static policy:
    a Guaranteed pod with integer CPU requests gets exclusive CPUs), and the thread pools are
    sized to what the pod was given (its cpuset and CFS quota).
No sets (`cpu_sets: none`, or `FORGE_PROFILE__CPU_SETS=none`) keeps the behaviour from before CPU
sets: no pinning, thread pools at the libraries' defaults.

Pure functions except `Machine.this()` (reads /sys, /proc and the affinity) and `apply()`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# The services a profile gives a CPU set (Milvus Lite runs as a child of the router, on its set).
CPU_SET_SERVICES = ("router", "guardrails", "embed", "llm")
# Services that run on another's set: the HTTP gateway is the router's front door (a thin
# adapter, idle while the router works), so it shares the router's CPUs, not the LLM's.
CPU_SET_SHARED_WITH = {"gateway": "router"}
# Thread-pool sizes a pinned service gets (an operator's explicit value is kept): OpenMP (torch's
# intra-op pool reads it at first use), MKL and OpenBLAS (numpy), Rayon (Hugging Face tokenizers).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
# vLLM's CPU worker binds its OpenMP threads to this list ("auto" = its own choice, "nobind").
VLLM_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
# Set in every Kubernetes pod.
KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"


class CpuSetError(ValueError):
    """A CPU list that cannot be parsed; the message quotes it and says why."""


@dataclass(frozen=True)
class CpuSpec:
    """A parsed CPU list: explicit ids, and optionally "from this id to the last CPU"."""

    ids: frozenset[int] = frozenset()
    open_from: int | None = None

    @property
    def needs_cpus(self) -> int:
        """How many CPUs (ids 0..n-1) a machine needs for every id this spec names to exist."""
        highest = max([*self.ids, *([self.open_from] if self.open_from is not None else [])])
        return highest + 1

    def resolve(self, online: Iterable[int]) -> frozenset[int]:
        """The CPUs of `online` this spec names."""
        cpus = set(online)
        tail = {c for c in cpus if self.open_from is not None and c >= self.open_from}
        return frozenset((self.ids & cpus) | tail)


def parse_cpu_list(text: str | int) -> CpuSpec:
    """Parse "0", "1-3", "0,2-3", "1-" (open-ended). Raises CpuSetError naming the problem."""
    raw = str(text).strip()
    if not raw:
        raise CpuSetError("empty CPU list (write e.g. '0', '1-3', '0,2' or '1-')")
    ids: set[int] = set()
    open_from: int | None = None
    for part in raw.split(","):
        item = part.strip()
        low_text, dash, high_text = item.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if high_text.strip() else None
        except ValueError:
            raise CpuSetError(f"CPU list {raw!r}: {item!r} is not a CPU id, a range 'a-b' or 'a-'") from None
        if low < 0 or (high is not None and high < 0):
            raise CpuSetError(f"CPU list {raw!r}: CPU ids are >= 0")
        if not dash:
            ids.add(low)
        elif high is None:
            open_from = low if open_from is None else min(open_from, low)
        elif high < low:
            raise CpuSetError(f"CPU list {raw!r}: range {item!r} runs backwards")
        else:
            ids.update(range(low, high + 1))
    return CpuSpec(frozenset(ids), open_from)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Linux's form: sorted, runs as ranges ("0-3,6"); "" for no CPUs."""
    ordered = sorted(set(cpus))
    runs: list[str] = []
    start = prev = None
    for cpu in ordered:
        if prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    if start is not None:
        runs.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(runs)


def _parse_sys_list(text: str) -> frozenset[int]:
    spec = parse_cpu_list(text)
    return spec.ids


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of time the cgroup (v2 `cpu.max`) allows this process, or None for no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Machine:
    """The CPUs of the machine this runs on, as a process sees them."""

    online: frozenset[int]  # every online logical CPU of the machine (not of a container)
    allowed: frozenset[int]  # the CPUs this process may run on (its affinity: cpuset, taskset)
    in_kubernetes: bool = False
    cpu_quota: float | None = None  # CFS quota in CPUs (Kubernetes CPU limits), None = none

    @classmethod
    def of(cls, cpus: Iterable[int]) -> Machine:
        """A plain machine with these CPUs, all usable (for tests and `forge plan` examples)."""
        every = frozenset(cpus)
        return cls(every, every)

    @classmethod
    def this(cls, environ: Mapping[str, str] | None = None, sys_root: Path = Path("/sys")) -> Machine:
        env = os.environ if environ is None else environ
        try:
            online = _parse_sys_list((sys_root / "devices/system/cpu/online").read_text())
        except (OSError, CpuSetError):
            online = frozenset(range(os.cpu_count() or 1))
        allowed = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else online
        return cls(
            online=online | allowed,  # a CPU the process may use is online, whatever /sys said
            allowed=allowed,
            in_kubernetes=bool(env.get(KUBERNETES_ENV)),
            cpu_quota=_cgroup_cpu_quota(sys_root / "fs/cgroup"),
        )

    def describe(self) -> str:
        usable = (
            "all usable"
            if self.allowed == self.online
            else f"{len(self.allowed)} usable ({format_cpu_list(self.allowed)})"
        )
        quota = f", CPU quota {self.cpu_quota:g}" if self.cpu_quota is not None else ""
        pod = ", in a Kubernetes pod" if self.in_kubernetes else ""
        return f"{len(self.online)} CPUs ({format_cpu_list(self.online)}), {usable}{quota}{pod}"


@dataclass(frozen=True)
class Placement:
    """Where one service runs on this machine, and why."""

    service: str
    requested: str | None  # the profile's set as written; None = no CPU sets (no pinning)
    cpus: frozenset[int]  # the CPUs the process runs on
    pin: bool  # whether the service calls sched_setaffinity (its CPUs differ from what it has)
    threads: int | None  # thread-pool size; None = the libraries' defaults (no sets)
    note: str  # how the CPUs were chosen, in words
    warning: str | None = None
    environment: dict[str, str] = field(default_factory=dict)  # thread-pool variables to set

    def summary(self) -> str:
        text = f"{self.service}: CPUs {format_cpu_list(self.cpus)} ({self.note})"
        if self.threads is not None:
            text += f"; thread pools {self.threads}"
        if bind := self.environment.get(VLLM_BIND_ENV):
            text += f"; vLLM OpenMP bind {bind}"
        return text


def thread_count(cpus: frozenset[int], quota: float | None) -> int:
    """Threads a pool may usefully run: one per CPU of the set, capped by a CFS quota."""
    count = len(cpus)
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def vllm_bind(cpus: frozenset[int]) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for the LLM's set: its CPUs less the highest, which is left to the
    engine core's scheduler and the service's gRPC front (as vLLM's own "auto" reserves one); a set
    of one CPU is the worker's whole."""
    ordered = sorted(cpus)
    return format_cpu_list(ordered[:-1] if len(ordered) > 1 else ordered)


def thread_environment(service: str, cpus: frozenset[int], threads: int) -> dict[str, str]:
    """The thread-pool variables a pinned service sets for itself and its children. The LLM's pools
    are vLLM's to size: it reads the affinity (`available_cpu_count`) and sizes its worker's OpenMP
    pool from VLLM_CPU_OMP_THREADS_BIND; an OMP_NUM_THREADS from outside would keep its serving
    threads at that count instead of 1."""
    if service == "llm":
        return {VLLM_BIND_ENV: vllm_bind(cpus), "RAYON_NUM_THREADS": str(threads)}
    return dict.fromkeys(THREAD_ENV, str(threads))


def place(service: str, requested: str | None, machine: Machine, host_cpus: int | None = None) -> Placement:
    """Where `service` runs given its profile set (`requested`, None = none) and the machine."""
    if requested is None:
        return Placement(
            service, None, machine.allowed, False, None, "no CPU sets: anywhere, as the OS places it"
        )
    spec = parse_cpu_list(requested)
    if machine.in_kubernetes:
        cpus = machine.allowed
        threads = thread_count(cpus, machine.cpu_quota)
        note = "Kubernetes pod: the kubelet's CPU manager places it, Forge does not pin"
        return Placement(
            service, requested, cpus, False, threads, note, None, thread_environment(service, cpus, threads)
        )
    wanted = spec.resolve(machine.online)
    cpus = wanted & machine.allowed
    warning = None
    note = f"profile set {requested}"
    if not cpus:
        cpus = machine.allowed
        note = f"profile set {requested} unavailable: every usable CPU"
        assumed = f"the profile assumes {host_cpus} CPUs, " if host_cpus else ""
        warning = (
            f"{service}: CPU set {requested} names no CPU this process may use "
            f"({assumed}this machine has {machine.describe()}); running on "
            f"{format_cpu_list(cpus)}, shared with the other services"
        )
    elif cpus != wanted or spec.resolve(range(spec.needs_cpus)) - machine.online:
        missing = (spec.resolve(range(spec.needs_cpus)) - machine.online) | (wanted - machine.allowed)
        note = f"part of profile set {requested}"
        assumed = f"the profile assumes {host_cpus} CPUs, " if host_cpus else ""
        warning = (
            f"{service}: CPU set {requested} names CPUs this process cannot use "
            f"({format_cpu_list(missing)}; {assumed}this machine has {machine.describe()}); "
            f"running on {format_cpu_list(cpus)}"
        )
    threads = thread_count(cpus, machine.cpu_quota)
    return Placement(
        service,
        requested,
        cpus,
        cpus != machine.allowed,
        threads,
        note,
        warning,
        thread_environment(service, cpus, threads),
    )


def _pin_every_thread(cpus: frozenset[int]) -> None:
    """sched_setaffinity on every thread of this process: pid 0 would be the calling thread only,
    and threads started before (gRPC's, OpenBLAS's pool) would keep running anywhere. New threads
    and child processes inherit the mask of the thread that makes them."""
    tasks = Path("/proc/self/task")
    tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(tid, cpus)


def apply(placement: Placement, environ: dict[str, str] | None = None) -> str | None:
    """Pin this process to the placement's CPUs and size its thread pools (variables an operator
    set are kept). Returns a warning when pinning failed; starting goes on regardless."""
    env = os.environ if environ is None else environ
    if placement.threads is None:
        return None
    for name, value in placement.environment.items():
        env.setdefault(name, value)
    problem = None
    if placement.pin:
        try:
            _pin_every_thread(placement.cpus)
        except (OSError, AttributeError) as exc:  # EPERM under a seccomp profile; no affinity API
            problem = f"{placement.service}: could not pin to CPUs {format_cpu_list(placement.cpus)}: {exc}"
    torch = sys.modules.get("torch")
    if torch is not None and placement.service != "llm":  # imported already: resize its pool now
        with contextlib.suppress(Exception):
            torch.set_num_threads(int(env.get("OMP_NUM_THREADS", placement.threads)))
    return problem


def current_cpus() -> str:
    """The CPUs the calling thread may run on, in Linux's list form (what GetInfo reports)."""
    if not hasattr(os, "sched_getaffinity"):
        return ""
    return format_cpu_list(os.sched_getaffinity(0))
