"""`forge plan`: the GPU slice plan of a SKU profile, in fractions and bytes, and how each slice
is enforced under the profile's isolation mode."""

from __future__ import annotations

from services.common.config import GIB, SERVICES_WITH_SLICES, Isolation, SkuProfile
from services.common.isolation import ISOLATION_SUMMARY, MPS_LIMIT_ENV, enforcement


def _gib(n: int) -> str:
    return f"{n / GIB:8.2f} GiB"


def render_plan(profile: SkuProfile) -> str:
    dev = profile.device
    lines = [
        f"profile      {profile.name}: {profile.description}",
        f"device       {dev.name}, {dev.memory_gib:g} GiB ({dev.memory_bytes} bytes)"
        + (", unified memory" if dev.unified_memory else "")
        + (f", compute capability {dev.compute_capability}" if dev.compute_capability else ""),
        f"isolation    {profile.isolation.value}: {ISOLATION_SUMMARY[profile.isolation]}",
        f"llm engine   {profile.llm_engine}    milvus on {profile.milvus}",
        f"sessions     max {profile.admission.max_sessions}"
        + (
            f", queue up to {profile.admission.queue.max_depth}"
            if profile.admission.queue.enabled
            else ", no queue (reject at the limit)"
        ),
        "",
        f"{'slice':<12}{'fraction':>9}  {'bytes':>14}  {'':>12}  where",
    ]
    total = 0.0
    for service in SERVICES_WITH_SLICES:
        fraction = profile.slices.of(service)
        total += fraction
        where = "GPU" if fraction > 0 else "CPU"
        lines.append(
            f"{service:<12}{fraction:>9.2f}  {profile.slice_bytes(service):>14}  "
            f"{_gib(profile.slice_bytes(service))}  {where}"
        )
    buffer_bytes = int(profile.buffer * dev.memory_bytes)
    lines.append(f"{'buffer':<12}{profile.buffer:>9.2f}  {buffer_bytes:>14}  {_gib(buffer_bytes)}")
    total += profile.buffer
    used = int(total * dev.memory_bytes)
    lines.append(f"{'total':<12}{total:>9.2f}  {used:>14}  {_gib(used)}  (<= 1.00: OK)")
    lines += ["", f"enforced by (isolation {profile.isolation.value})"]
    lines += [f"{service:<12}{enforcement(profile, service)}" for service in SERVICES_WITH_SLICES]
    if profile.isolation == Isolation.MPS:
        lines.append(
            f"MPS: `forge up` sets {MPS_LIMIT_ENV} per GPU service; the control daemon must run "
            "(nvidia-cuda-mps-control -d)"
        )
    return "\n".join(lines)
