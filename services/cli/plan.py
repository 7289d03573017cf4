"""`forge plan`: the GPU slice plan of a SKU profile, in fractions and bytes, and how each slice
is enforced under the profile's isolation mode; the profile's CPU sets and where each service
would run on this machine, with a warning where the machine has fewer CPUs than the profile
assumes."""

from __future__ import annotations

from services.common.config import GIB, SERVICES_WITH_SLICES, Isolation, SkuProfile
from services.common.cpusets import CPU_SET_SERVICES, VLLM_BIND_ENV, Machine, format_cpu_list, place
from services.common.isolation import ISOLATION_SUMMARY, MPS_LIMIT_ENV, enforcement


def _gib(n: int) -> str:
    return f"{n / GIB:8.2f} GiB"


def render_cpu_sets(profile: SkuProfile, machine: Machine) -> list[str]:
    """The CPU-set lines: the profile's set per service, the CPUs it gets here, its thread pools."""
    sets = profile.cpu_sets
    if not sets.enabled:
        return [
            f"cpu sets     none: each process runs where the OS puts it (this machine: {machine.describe()})"
        ]
    lines = [
        f"cpu sets     written for {sets.host_cpus} CPUs; this machine: {machine.describe()}",
        f"{'service':<12}{'profile':<10}{'here':<10}{'threads':>7}",
    ]
    placements = [place(s, sets.of(s), machine, sets.host_cpus) for s in CPU_SET_SERVICES]
    for p in placements:
        notes = [f"vLLM OpenMP bind {p.environment[VLLM_BIND_ENV]}"] if VLLM_BIND_ENV in p.environment else []
        if p.warning or machine.in_kubernetes:
            notes.append(p.note)
        row = f"{p.service:<12}{p.requested or '':<10}{format_cpu_list(p.cpus):<10}{p.threads or '':>7}"
        lines.append(f"{row}  {'; '.join(notes)}".rstrip())
    if len(machine.online) < (sets.host_cpus or 0):
        lines.append(
            f"warning: this machine has {len(machine.online)} CPUs, the profile's sets are written for "
            f"{sets.host_cpus}: each service starts on the CPUs shown (`here`), with a warning"
        )
    else:
        lines += [f"warning: {p.warning}" for p in placements if p.warning]
    llm = next(p for p in placements if p.service == "llm")
    shared = {p.service: p.cpus & llm.cpus for p in placements if p is not llm and p.cpus & llm.cpus}
    if shared:
        lines.append(
            "warning: here the LLM shares CPUs with "
            + ", ".join(f"{s} ({format_cpu_list(c)})" for s, c in shared.items())
            + ": vLLM's busy-wait can delay them"
        )
    return lines


def render_model(profile: SkuProfile) -> list[str]:
    """What the profile's model takes of the LLM's slice: weights + a KV cache per session."""
    model = profile.model
    if model is None:
        return []
    sessions = profile.admission.max_sessions
    need = model.need_bytes(sessions)
    where = (
        f"of the llm slice's {_gib(profile.slice_bytes('llm')).strip()}: fits"
        if profile.slices.llm > 0
        else "of CPU memory"
    )
    licence = f", {model.licence}" if model.licence else ""
    return [
        "",
        f"model        {model.name} ({model.quantization}, {profile.llm_engine}{licence})",
        f"{'weights':<12}{_gib(model.weights_bytes)}",
        f"{'kv cache':<12}{_gib(model.kv_bytes(sessions))}  {sessions} sessions x "
        f"{model.context_tokens} tokens x {model.kv_kib_per_token:g} KiB",
        f"{'needs':<12}{_gib(need)}  {where}",
    ]


def render_plan(profile: SkuProfile, machine: Machine | None = None) -> str:
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
    lines += render_model(profile)
    lines += ["", f"enforced by (isolation {profile.isolation.value})"]
    lines += [f"{service:<12}{enforcement(profile, service)}" for service in SERVICES_WITH_SLICES]
    if profile.isolation == Isolation.MPS:
        lines.append(
            f"MPS: `forge up` sets {MPS_LIMIT_ENV} per GPU service; the control daemon must run "
            "(nvidia-cuda-mps-control -d)"
        )
    lines += ["", *render_cpu_sets(profile, machine or Machine.this())]
    return "\n".join(lines)
