"""Bootstrap of a Forge gRPC service: one `grpc.aio` server with reflection, grpc.health.v1,
OpsService, error-mapping / metrics / tracing interceptors, a Prometheus `/metrics` port, and a
graceful drain on SIGTERM or SIGINT.

Lifecycle: bind and start NOT_SERVING -> `app.load()` (models) -> SERVING -> on signal:
NOT_SERVING, stop accepting, let in-flight calls finish within the grace period -> `app.close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Protocol

from forge.v1 import ops_pb2, ops_pb2_grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import REGISTRY

from services.common import logs, reloading_channel, telemetry
from services.common.channels import SERVER_OPTIONS, ChannelOptions
from services.common.config import SkuProfile
from services.common.credentials import ServerSecurity
from services.common.gpu import OVER_SLICE, read_gpu_snapshot, slice_usage
from services.common.gpu_metrics import GpuMemoryCollector
from services.common.interceptors import (
    AuthInterceptor,
    DecodingInterceptor,
    DrainInterceptor,
    ErrorMappingInterceptor,
    MetricsInterceptor,
)
from services.common.metrics import MetricsEndpoint, serve_metrics
from services.common.ops import OpsServicer
from services.common.settings import DEFAULT_MAX_CONCURRENT_RPCS

log = logging.getLogger(__name__)

OPS_SERVICE = ops_pb2.DESCRIPTOR.services_by_name["OpsService"].full_name


class ServiceApp(Protocol):
    """What a Forge service plugs into the server kit. The domain logic lives behind it."""

    name: str

    @property
    def grpc_service_names(self) -> Sequence[str]: ...

    def register(self, server: aio.Server) -> None:
        """Add the service's servicers to the server."""

    async def load(self) -> None:
        """Heavy start-up (models). The service reports SERVING only once this returns."""

    async def close(self) -> None:
        """Release what load() took, after in-flight calls have drained."""

    def settings_summary(self) -> Mapping[str, str]:
        """Settings worth showing an operator (OpsService.GetInfo)."""

    def compute_device(self) -> str:
        """Where the service computes: "cpu", "cuda:0", ..."""


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 0
    # None: no /metrics endpoint (in-process tests); 0: any free port.
    metrics_port: int | None = None
    drain_grace_s: float = 10.0
    # How often the process checks its GPU use against its slice (logging over-slice transitions
    # even when nothing scrapes /metrics); None: never. Without a GPU the watch ends at once.
    gpu_watch_interval_s: float | None = 15.0
    # gRPC channel arguments (keepalive, message limits); tests shorten the ping intervals.
    channel_args: ChannelOptions = SERVER_OPTIONS
    # TLS and API keys. The default (plaintext, no keys) is for in-process tests; a service run
    # as a process (entrypoint.serve) gets the secure settings: mTLS inside, keys on the router.
    security: ServerSecurity = ServerSecurity()  # noqa: RUF009 - frozen, shared safely
    # Calls in flight beyond this are refused by gRPC with RESOURCE_EXHAUSTED before any handler
    # runs: a flood of slow streams cannot exhaust the process.
    maximum_concurrent_rpcs: int | None = DEFAULT_MAX_CONCURRENT_RPCS


def forge_version() -> str:
    try:
        return metadata.version("forge-mesh")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


_gpu_collector_registered = False


def _register_gpu_collector(app: ServiceApp, profile: SkuProfile) -> None:
    global _gpu_collector_registered
    if not _gpu_collector_registered:  # one per process: Prometheus refuses duplicate series
        REGISTRY.register(GpuMemoryCollector(app.name, profile.slices.of(app.name), app.compute_device))
        _gpu_collector_registered = True


class ForgeServer:
    def __init__(self, app: ServiceApp, profile: SkuProfile, options: ServerOptions) -> None:
        self.app = app
        self.profile = profile
        self.options = options
        self.port = 0
        self.metrics: MetricsEndpoint | None = None
        self._health = health.aio.HealthServicer()
        self._server: aio.Server | None = None
        self._stopped = asyncio.Event()
        self._drain = DrainInterceptor()
        self._background: set[asyncio.Task[None]] = set()
        # Set by fail(): the app's engine or model died; the process drains and exits non-zero.
        self.fatal_reason: str | None = None
        self.fatal = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    def _interceptors(self) -> list[aio.ServerInterceptor]:
        security = self.options.security
        # Outermost first: a refused key costs a metadata lookup and a hash, nothing more.
        auth: list[aio.ServerInterceptor] = []
        if security.keys is not None:
            admin = frozenset({*getattr(self.app, "admin_service_names", ()), OPS_SERVICE})
            auth.append(AuthInterceptor(security.keys, admin))
        return [
            *auth,
            telemetry.server_interceptor(),
            MetricsInterceptor(),
            self._drain,
            DecodingInterceptor(),
            ErrorMappingInterceptor(),
        ]

    def _info_settings(self) -> Mapping[str, str]:
        from services.common.cpusets import current_cpus

        security = self.options.security
        return {
            **self.app.settings_summary(),
            "transport": security.transport,
            "auth": security.auth,
            # The CPUs this process runs on (its profile's CPU set once pinned), as Linux lists them.
            "cpus": current_cpus(),
        }

    def reload_certificates(self) -> None:
        """SIGHUP: read the TLS files again for the next connections, served and dialled."""
        self.options.security.reload()
        reloading_channel.request_reload()
        log.info("%s: TLS files will be read again for new connections", self.app.name)

    async def start(self) -> None:
        telemetry.configure_tracing(self.app.name)
        server = aio.server(
            interceptors=self._interceptors(),
            options=self.options.channel_args,
            maximum_concurrent_rpcs=self.options.maximum_concurrent_rpcs,
        )
        self.app.register(server)
        bind_health = getattr(self.app, "bind_health", None)
        if bind_health is not None:  # apps whose dependency can die at run time report it
            bind_health(self._report_health)
        bind_health_entries = getattr(self.app, "bind_health_entries", None)
        if bind_health_entries is not None:  # apps that show their dependencies' health (the router)
            bind_health_entries(self._report_entry)
        bind_fatal = getattr(self.app, "bind_fatal", None)
        if bind_fatal is not None:  # apps whose engine or model can die for good
            bind_fatal(self.fail)
        ops_pb2_grpc.add_OpsServiceServicer_to_server(
            OpsServicer(
                service=self.app.name,
                version=forge_version(),
                profile=self.profile.name,
                isolation=self.profile.isolation.value,
                slice_fraction=self.profile.slices.of(self.app.name),
                compute_device=self.app.compute_device,
                settings=self._info_settings,
                # Apps that wait for other services say which (the router's readiness).
                dependencies=getattr(self.app, "dependencies", None),
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [*self.app.grpc_service_names, OPS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        address = f"{self.options.host}:{self.options.port}"
        credentials = self.options.security.credentials()
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot bind {self.options.host}:{self.options.port}")
        await self._set_serving(False)
        await server.start()
        self._server = server
        if self.options.metrics_port is not None:
            _register_gpu_collector(self.app, self.profile)
            self.metrics = serve_metrics(self.options.host, self.options.metrics_port)
        if self.options.gpu_watch_interval_s is not None:
            watch = asyncio.create_task(self._watch_gpu_slice(self.options.gpu_watch_interval_s))
            self._background.add(watch)
            watch.add_done_callback(self._background.discard)
        security = self.options.security
        log.info(
            "%s listening on %s (%s; %s)",
            self.app.name,
            self.address,
            security.transport,
            "API keys required" if security.auth == "keys" else "no API keys",
        )

    async def _watch_gpu_slice(self, interval_s: float) -> None:
        """Feed the over-slice alarm (a warning per transition) until stop; end where no GPU is."""
        fraction = self.profile.slices.of(self.app.name)
        while not self._stopped.is_set():
            snapshot = await asyncio.to_thread(read_gpu_snapshot)
            if not snapshot.available:
                return
            device = self.app.compute_device()
            OVER_SLICE.observe(
                await asyncio.to_thread(slice_usage, self.app.name, fraction, device, snapshot)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), interval_s)

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.app.grpc_service_names):
            await self._health.set(name, status)

    def _report_health(self, serving: bool) -> None:
        if not self._stopped.is_set():
            task = asyncio.get_running_loop().create_task(self._set_serving(serving))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _report_entry(self, name: str, serving: bool) -> None:
        """A health entry of its own (e.g. `dependency/embed`), beside the service's."""
        if not self._stopped.is_set():
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            task = asyncio.get_running_loop().create_task(self._health.set(name, status))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def fail(self, reason: str) -> None:
        """The app cannot serve again without a restart (its engine or model died): report
        NOT_SERVING now; run_service then drains and exits with EXIT_FATAL, so whatever supervises
        the process (forge up, compose, systemd, Kubernetes) starts a fresh one."""
        if self.fatal_reason is None:
            log.error("%s cannot serve any more: %s; draining and exiting", self.app.name, reason)
            self.fatal_reason = reason
        self._report_health(False)
        self.fatal.set()

    async def load_and_serve(self) -> None:
        await self.app.load()
        await self._set_serving(True)
        log.info("%s serving", self.app.name)

    async def stop(self) -> None:
        """Drain: NOT_SERVING for every service, refuse new calls, let in-flight ones finish
        within the grace period, then close the server and release the app."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self._health.enter_graceful_shutdown()
        self._drain.draining = True
        if not await self._drain.wait_idle(self.options.drain_grace_s):
            log.warning(
                "%d call(s) still running after %.0fs grace; cancelling them",
                self._drain.inflight,
                self.options.drain_grace_s,
            )
        if self._server is not None:
            await self._server.stop(0.5)  # flush responses of calls that just finished
        await self.app.close()
        if self.metrics is not None:
            self.metrics.close()
        telemetry.shutdown_tracing()
        log.info("%s stopped", self.app.name)


# The exit code of a service whose engine or model died (distinct from 1, a failed start).
EXIT_FATAL = 3


def announce(event: str, **fields: object) -> None:
    """One JSON line on stdout per lifecycle event, for supervisors (`forge up`) and tests."""
    print(json.dumps({"event": event, **fields}), flush=True)


async def run_service(app: ServiceApp, profile: SkuProfile, options: ServerOptions) -> int:
    """Serve until SIGTERM/SIGINT, then drain. Returns the process exit code."""
    server = ForgeServer(app, profile, options)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
    await server.start()
    announce(
        "listening",
        service=app.name,
        address=server.address,
        port=server.port,
        metrics_port=server.metrics.port if server.metrics else None,
    )
    loading = asyncio.create_task(server.load_and_serve())
    stopping = asyncio.create_task(stop_requested.wait())
    failing = asyncio.create_task(server.fatal.wait())
    await asyncio.wait({loading, stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if loading.done() and loading.exception() is not None:
        log.error("%s failed to load: %s", app.name, loading.exception(), exc_info=loading.exception())
        exit_code = 1
    elif loading.done() and not server.fatal.is_set():
        announce("serving", service=app.name, port=server.port)
        await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    else:
        loading.cancel()
    if server.fatal.is_set():
        announce("failed", service=app.name, reason=server.fatal_reason)
        exit_code = EXIT_FATAL
    for task in (stopping, failing):
        task.cancel()
    announce("draining", service=app.name)
    await server.stop()
    announce("stopped", service=app.name, exit_code=exit_code)
    return exit_code


def configure_logging(level: str = "INFO") -> None:
    """Forge's loggers at `level`, third-party ones quieter (services.common.logs)."""
    logs.configure_logging(level)
