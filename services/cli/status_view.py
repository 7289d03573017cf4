"""`forge status` on one screen: the services' health, the router's sessions, queue and
rejections, the GPU slices against their use, and what did not answer."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from services.cli.status_gather import Capacity, GpuLedger, MeshStatus, ServiceStatus

HEALTH_STYLE = {"SERVING": "green", "NOT_SERVING": "yellow", "UNREACHABLE": "bold red"}
GIB = 1 << 30


def duration(seconds: float | None) -> str:
    """3 s, 4 min, 2 h 05 min, 3 d 4 h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _note(s: ServiceStatus) -> str:
    notes = []
    if s.error:
        notes.append(s.error)
    if s.waiting_for:
        notes.append(f"waiting for {', '.join(s.waiting_for)}")
    down = [f"{name}: {d.detail}" for name, d in s.dependencies.items() if not d.serving]
    if down:
        notes.append("sees " + "; ".join(down))
    return "; ".join(notes)


def services_table(status: MeshStatus) -> Table:
    table = Table(title="Services", title_justify="left", expand=False)
    for column in ("service", "health", "address"):
        table.add_column(column, no_wrap=True)
    for column in ("runs", "version", "pid", "up"):
        table.add_column(column, overflow="fold")
    for s in status.services:
        table.add_row(
            s.name,
            Text(s.health, style=HEALTH_STYLE.get(s.health, "yellow")),
            s.address,
            " ".join(p for p in (s.runs, f"on {s.device}" if s.device else "") if p) or "-",
            s.version or "-",
            str(s.pid) if s.pid else "-",
            duration(s.uptime_s),
        )
    return table


def notes(status: MeshStatus) -> Text | None:
    """Why a service is not SERVING, what the router waits for: one line each, under the table."""
    lines = [f"  {s.name}: {note}" for s in status.services if (note := _note(s))]
    return Text("\n".join(lines), style="yellow") if lines else None


def admission_lines(capacity: Capacity | None, error: str) -> Text:
    if capacity is None:
        return Text(f"Admission: unknown ({error or 'router not asked'})", style="yellow")
    queue = f"queue {capacity.queued} / {capacity.queue_capacity}" if capacity.queue_enabled else "queue off"
    rejected = ", ".join(f"{reason} {n}" for reason, n in capacity.rejected_total.items()) or "none"
    lines = [
        f"Sessions {capacity.active_sessions} / {capacity.max_sessions} in use (profile "
        f"{capacity.profile}); {queue}; admitted {capacity.admitted_total}",
        f"Rejected: {rejected}",
    ]
    if capacity.admission_mode == "shared":
        lines.insert(
            1,
            f"Shared through Redis by {capacity.replicas} router replicas; this one "
            f"({capacity.replica_id}) runs {capacity.replica_active_sessions}",
        )
    elif capacity.admission_mode == "shared_fallback":
        lines.insert(
            1,
            f"Redis unavailable: this replica ({capacity.replica_id}) admits its share of the limit "
            f"on its own (limit / {capacity.replicas} replicas) until Redis answers",
        )
    if capacity.tenants:
        lines.append(
            "By tenant: "
            + ", ".join(
                f"{t.tenant} {t.active_sessions}" + (f"/{t.max_sessions}" if t.max_sessions else "")
                for t in capacity.tenants
            )
        )
    return Text("\n".join(lines))


def gpu_view(gpu: GpuLedger | None, error: str) -> RenderableType:
    if gpu is None:
        return Text(f"GPU: unknown ({error or 'router not asked'})", style="yellow")
    if not gpu.available:
        # Said as the services see it: no device, or no driver; every slice is then on the CPU.
        detail = gpu.detail.removeprefix("no GPU: ") or "no device"
        return Text(f"GPU: none ({detail}); the services compute on the CPU")
    table = Table(title="GPU slices", title_justify="left", expand=False)
    for column in ("service", "device", "slice", "used", "of slice"):
        table.add_column(column)
    for u in gpu.slices:
        share = f"{u.used_bytes / u.slice_bytes:.0%}" if u.slice_bytes else "-"
        table.add_row(
            u.service,
            u.device,
            f"{u.slice_fraction:.0%} = {gib(u.slice_bytes)}",
            gib(u.used_bytes),
            Text(share + (" OVER" if u.over_slice else ""), style="bold red" if u.over_slice else ""),
        )
    devices = "\n".join(
        f"GPU {d.index} {d.name}: {gib(d.memory_used_bytes)} / {gib(d.memory_total_bytes)} used"
        for d in gpu.devices
    )
    return Group(Text(devices), table)


def render(status: MeshStatus) -> RenderableType:
    """The whole screen."""
    down = [s for s in status.services if not s.serving]
    when = status.checked_at.astimezone().strftime("%H:%M:%S")
    headline = (
        Text(f"Forge at {when}: all {len(status.services)} services SERVING", style="bold green")
        if not down
        else Text(
            f"Forge at {when}: {len(down)} of {len(status.services)} services not SERVING",
            style="bold red",
        )
    )
    parts: list[RenderableType] = [headline, services_table(status)]
    if (why := notes(status)) is not None:
        parts.append(why)
    parts.append(admission_lines(status.capacity, status.errors.get("capacity", "")))
    parts.append(gpu_view(status.gpu, status.errors.get("gpu", "")))
    unreachable = status.unreachable
    parts.append(
        Text(f"Unreachable: {', '.join(unreachable)}", style="bold red")
        if unreachable
        else Text("Unreachable: none")
    )
    return Group(*parts)
