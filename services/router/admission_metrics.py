"""Prometheus view of the router's admission controller.

Gauges and counters are read from `AdmissionController.snapshot()` at scrape time, so they can
never drift from the controller's own numbers. The two histograms (queue wait, session length) are
fed by the controller's listener hooks. One collector yields all of them, so a single `register()`
exposes everything, on the process registry or on a private one in tests.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from services.router.admission import ADMISSION_MODES, REASONS, Admission, AdmissionController
from services.router.ports import Priority

# Queue waits are capped by the queue's max wait (default 5 s interactive, 30 s batch).
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30)
# A Chat session lasts from sub-second refusals by a rail to minutes-long generations.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


def priority_label(priority: Priority) -> str:
    return priority.name.lower()


class AdmissionCollector(Collector):
    """Exposes one controller's capacity and counters; also its listener for the histograms."""

    def __init__(self, controller: AdmissionController) -> None:
        # registry=None: these histograms are yielded by `collect` below, not registered on their own.
        self._wait = Histogram(
            "forge_router_admission_wait_seconds",
            "Time an admitted Chat session waited in the admission queue (0 when admitted at once).",
            ["priority"],
            buckets=WAIT_BUCKETS,
            registry=None,
        )
        for priority in Priority:  # both series present from the first scrape
            self._wait.labels(priority_label(priority))
        self._duration = Histogram(
            "forge_router_session_duration_seconds",
            "Time a Chat session held its admission slot.",
            buckets=DURATION_BUCKETS,
            registry=None,
        )
        self._controller = controller
        controller.add_listener(self)

    @property
    def controller(self) -> AdmissionController:
        return self._controller

    def bind(self, controller: AdmissionController) -> None:
        """Follow another controller (e.g. the router app was rebuilt in the same process)."""
        if controller is self._controller:
            return
        self._controller.remove_listener(self)
        self._controller = controller
        controller.add_listener(self)

    # --- AdmissionListener ----------------------------------------------------------------------

    def on_admitted(self, admission: Admission) -> None:
        self._wait.labels(priority_label(admission.priority)).observe(admission.queued_s)

    def on_rejected(self, reason: str, priority: Priority) -> None:
        pass  # counted by the controller, read from the snapshot

    def on_released(self, admission: Admission, held_s: float) -> None:
        self._duration.observe(held_s)

    # --- Collector ------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        snap = self._controller.snapshot()
        yield _gauge(
            "forge_router_sessions_active", "Chat sessions holding an admission slot.", snap.active_sessions
        )
        yield _gauge(
            "forge_router_sessions_max",
            "Concurrent Chat sessions allowed (SKU profile; all replicas when shared).",
            snap.max_sessions,
        )
        yield _gauge(
            "forge_router_queue_depth", "Requests waiting in the admission queue.", snap.queued_requests
        )
        yield _gauge(
            "forge_router_queue_capacity",
            "Admission queue capacity (0 when the queue is disabled).",
            snap.queue_capacity,
        )
        admitted = CounterMetricFamily("forge_router_admitted", "Chat sessions admitted.")
        admitted.add_metric([], snap.admitted_total)
        yield admitted
        rejected = CounterMetricFamily(
            "forge_router_rejected",
            "Chat requests refused by admission control, by reason.",
            labels=["reason"],
        )
        for reason in REASONS:
            rejected.add_metric([reason], snap.rejected_total.get(reason, 0))
        yield rejected
        tenants = GaugeMetricFamily(
            "forge_router_tenant_sessions_active",
            "Chat sessions holding an admission slot, per tenant (tenants with none are omitted).",
            labels=["tenant"],
        )
        for tenant in snap.tenants:
            tenants.add_metric([tenant.tenant], tenant.active_sessions)
        yield tenants
        mode = GaugeMetricFamily(
            "forge_router_admission_mode",
            "1 for the admission mode in force: in_process (this router's own limit), shared (one "
            "limit across replicas, in Redis), shared_fallback (Redis unavailable: this replica's share).",
            labels=["mode"],
        )
        for name in ADMISSION_MODES:
            mode.add_metric([name], 1 if snap.mode == name else 0)
        yield mode
        yield _gauge(
            "forge_router_replica_sessions_active",
            "Chat sessions this router replica runs (forge_router_sessions_active is global when shared).",
            snap.replica_active_sessions,
        )
        yield _gauge(
            "forge_router_admission_replicas",
            "Router replicas sharing the session limit (seen in Redis, or configured).",
            snap.replicas,
        )
        yield from self._wait.collect()
        yield from self._duration.collect()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation)
    gauge.add_metric([], value)
    return gauge


_registered: AdmissionCollector | None = None


def register_admission_metrics(controller: AdmissionController) -> None:
    """Expose `controller` on the process registry (`/metrics`). Idempotent per process, since
    Prometheus refuses duplicate series: later calls only point the one collector at the latest
    controller (a no-op for the same one)."""
    global _registered
    if _registered is None:
        collector = AdmissionCollector(controller)
        try:
            REGISTRY.register(collector)
        except ValueError:  # a clashing name registered elsewhere: leave no dangling listener
            controller.remove_listener(collector)
            raise
        _registered = collector
    else:
        _registered.bind(controller)
