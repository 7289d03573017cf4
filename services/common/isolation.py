"""How each service's GPU slice is enforced under the profile's isolation mode, and the
environment `forge up` gives each service process. Pure functions of the profile (and of the
environment passed in), so `forge plan`, `forge up` and the services agree.

  software      (default) each service caps itself: torch's per-process memory fraction (embed,
                guardrails), vLLM's gpu_memory_utilization (LLM). Soft: a CUDA context, memory
                allocated outside torch or a process that is not Forge's is not held by them.
  mps           the software caps plus a hard per-client limit that the MPS server enforces:
                CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="0=<MiB>M" = slice + MPS_CONTEXT_RESERVE_BYTES
                (the CUDA context the in-process caps do not count; vLLM refuses to start when
                its budget exceeds the free memory it sees, and under MPS that is the limit).
                Volta+ and not Jetson (validated by the profile). The operator starts the
                control daemon (`nvidia-cuda-mps-control -d`); without it CUDA ignores the limit
                and the services fall back to their software caps, so `forge up` warns.
  time_slicing  the software caps; the Kubernetes NVIDIA device plugin shares the GPU in time
                (no memory isolation, configured with the deployment); no per-process variable.
  none          no cap on the torch services (first come, first served: one can starve or OOM
                the others); vLLM is still given its slice because it preallocates what it is
                told (its default, 0.92 of the device, would leave the others nothing).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.config import GPU_SERVICES, MPS_CONTEXT_RESERVE_BYTES, Isolation, SkuProfile

MIB = 1024**2
MPS_LIMIT_ENV = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
MPS_PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
MPS_LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
# Where the control daemon and its clients meet when CUDA_MPS_PIPE_DIRECTORY is not set.
DEFAULT_MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"
MPS_PID_FILE = "nvidia-cuda-mps-control.pid"
# An appliance has one GPU: device ordinal 0 (of the devices CUDA_VISIBLE_DEVICES leaves visible).
MPS_DEVICE_ORDINAL = 0

ISOLATION_SUMMARY = {
    Isolation.SOFTWARE: "each service caps itself (soft limits)",
    Isolation.MPS: "software caps + a hard MPS limit per service (needs nvidia-cuda-mps-control -d)",
    Isolation.TIME_SLICING: "software caps; Kubernetes device-plugin time-slicing shares compute, not memory",
    Isolation.NONE: "no caps on torch services: first come, first served (vLLM still sized to its slice)",
}


def on_gpu(profile: SkuProfile, service: str) -> bool:
    """Whether `forge up`/the service puts this Forge process on the GPU (its slice is > 0)."""
    return service in GPU_SERVICES and profile.slices.of(service) > 0


def mps_limit_mib(profile: SkuProfile, service: str) -> int:
    """The service's hard MPS limit in MiB (rounded down): its slice + the CUDA context reserve."""
    return (profile.slice_bytes(service) + MPS_CONTEXT_RESERVE_BYTES) // MIB


def mps_limit_value(profile: SkuProfile, service: str) -> str:
    """CUDA_MPS_PINNED_DEVICE_MEM_LIMIT's value, NVIDIA's "<device>=<limit>" form, e.g. "0=5120M"."""
    return f"{MPS_DEVICE_ORDINAL}={mps_limit_mib(profile, service)}M"


def torch_memory_cap(profile: SkuProfile, service: str) -> float | None:
    """The fraction of device memory a torch service caps its allocator at, or None for no cap
    (isolation none, or the service is not on the GPU)."""
    if not on_gpu(profile, service) or profile.isolation == Isolation.NONE:
        return None
    return profile.slices.of(service)


def service_environment(
    profile: SkuProfile, service: str, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Variables `forge up` sets for one service's process on top of its own environment: under
    MPS, for a service on the GPU, its pinned memory limit and the MPS pipe/log directories the
    operator chose (so clients find the daemon); nothing otherwise."""
    if profile.isolation != Isolation.MPS or not on_gpu(profile, service):
        return {}
    source = os.environ if environ is None else environ
    env = {MPS_LIMIT_ENV: mps_limit_value(profile, service)}
    for name in (MPS_PIPE_ENV, MPS_LOG_ENV):
        if source.get(name):
            env[name] = source[name]
    return env


def enforcement(profile: SkuProfile, service: str) -> str:
    """How the service's slice is held, in words, for `forge plan`."""
    fraction = profile.slices.of(service)
    if service == "milvus":
        if profile.milvus == "gpu" and fraction > 0:
            return "Milvus server (not started by Forge): size its GPU memory pool to the slice"
        return "CPU (Milvus on CPU)"
    if not on_gpu(profile, service):
        return "CPU (no GPU slice)"
    if service == "llm" and profile.llm_engine == "llama_cpp":
        held = "llama.cpp: every layer on the GPU, no memory cap of its own (model + context size it)"
    elif service == "llm":
        held = f"vLLM gpu_memory_utilization {fraction:.2f}"
    elif (cap := torch_memory_cap(profile, service)) is not None:
        held = f"torch memory fraction {cap:.2f}"
    else:
        held = "no cap (isolation none)"
    if profile.isolation == Isolation.MPS:
        held += f" + MPS pinned limit {mps_limit_value(profile, service)}"
    return held


@dataclass(frozen=True)
class MpsDaemon:
    running: bool
    pipe_directory: Path
    detail: str


def mps_daemon(environ: Mapping[str, str] | None = None, proc: Path = Path("/proc")) -> MpsDaemon:
    """Whether an MPS control daemon serves the pipe directory the services will use. The daemon
    writes its pid to `<pipe dir>/nvidia-cuda-mps-control.pid` and listens on `<pipe dir>/control`."""
    source = os.environ if environ is None else environ
    pipe = Path(source.get(MPS_PIPE_ENV) or DEFAULT_MPS_PIPE_DIRECTORY)
    start = "start it with `nvidia-cuda-mps-control -d`"
    if not pipe.is_dir():
        return MpsDaemon(False, pipe, f"MPS pipe directory {pipe} does not exist: no control daemon; {start}")
    control = (pipe / "control").exists()
    try:
        pid: int | None = int((pipe / MPS_PID_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and (proc / str(pid)).exists():
        return MpsDaemon(True, pipe, f"MPS control daemon pid {pid} ({pipe})")
    if control:
        # A daemon on the host is invisible from a container's PID namespace; its pipe is not.
        seen = "no pid file" if pid is None else f"pid {pid} not visible here"
        return MpsDaemon(True, pipe, f"MPS control pipe in {pipe} ({seen})")
    return MpsDaemon(False, pipe, f"no MPS control daemon in {pipe} (no live pid, no control pipe); {start}")


def mps_startup_warning(profile: SkuProfile, environ: Mapping[str, str] | None = None) -> str | None:
    """What `forge up` warns about before starting an MPS profile's services, or None. A warning,
    not a refusal: without the daemon CUDA runs the services directly and ignores their pinned
    limits, and each service still holds itself to its slice (isolation degrades to software)."""
    if profile.isolation != Isolation.MPS or not any(on_gpu(profile, s) for s in GPU_SERVICES):
        return None
    daemon = mps_daemon(environ)
    if daemon.running:
        return None
    return (
        f"isolation mps, but {daemon.detail}. Without the daemon CUDA ignores {MPS_LIMIT_ENV}: the "
        "services run with their software caps only."
    )
