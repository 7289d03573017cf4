"""OpenTelemetry tracing: one tracer provider per process, and the gRPC interceptors that carry one
trace across every hop of a request.

Export is configured by the standard OTEL_* variables:

- OTEL_TRACES_EXPORTER=otlp|console|none; unset means otlp when OTEL_EXPORTER_OTLP_ENDPOINT or
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, else no exporter;
- OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL=grpc (default) or http/protobuf, and the exporter's own
  OTEL_EXPORTER_OTLP_* settings (endpoint, headers, timeout, insecure...);
- OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on), read by the SDK's
  TracerProvider itself; OTEL_SDK_DISABLED=true turns the SDK off;
- OTEL_RESOURCE_ATTRIBUTES adds resource attributes; service.name is always forge-<service>.

With none set, spans are still created (trace ids propagate across hops and the router returns
them) but nothing is exported and nothing fails.

Server side: opentelemetry-instrumentation-grpc's aio server interceptor opens the SERVER span
(from the caller's traceparent); inside it, `_ServerSpanStatus` sets the span's final
`rpc.grpc.status_code` and ERROR status for any non-OK outcome (the instrumentation leaves the
status unset for `abort_with_status`, which Forge's error mapping uses, and for uncaught errors)
and `forge.gpu_memory_bytes`. Client side: Forge's own interceptors (`tracing_client`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common import tracing_client
from services.common.gpu import read_gpu_snapshot
from services.common.interceptors import Behavior, Handler, _drain, _WrappingInterceptor

log = logging.getLogger(__name__)

# Health checks and reflection would drown the real traffic in traces.
_TRACED = filters.negate(
    filters.any_of(filters.service_prefix("grpc.health.v1"), filters.service_prefix("grpc.reflection"))
)
GPU_MEMORY_ATTRIBUTE = "forge.gpu_memory_bytes"
# NVML is read at most this often per process (the figure moves slowly: weights, KV cache, pools).
GPU_MEMORY_TTL_S = 5.0


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _exporter_from_env() -> SpanExporter | None:
    choice = _env("OTEL_TRACES_EXPORTER").lower()
    endpoint_set = bool(_env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp" or (choice == "" and endpoint_set):
        protocol = (
            _env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        ).lower()
        if protocol.startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

            return HttpExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if choice not in ("", "none"):
        log.warning(
            "OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none); not exporting", choice
        )
    return None


def build_provider(service: str) -> TracerProvider:
    """A tracer provider for `service` from the environment (sampler, exporter, resource)."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"forge-{service}"}))
    exporter = _exporter_from_env()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("exporting traces with %s", type(exporter).__name__)
    return provider


def configure_tracing(service: str) -> None:
    """Install the process's tracer provider once; later calls (several servers in one test
    process) keep the first."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    trace.set_tracer_provider(build_provider(service))


def add_span_processor(processor: SpanProcessor) -> None:
    """Add a span processor to this process's provider (installing one first if none is): a hook
    for tests, which record spans in memory, and for embedders with their own exporter."""
    configure_tracing("forge")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    provider.add_span_processor(processor)


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()


# -- GPU memory of this process, for span attributes -------------------------------------------------


def _child_pids() -> set[int]:
    """Direct children of this process (vLLM's engine core holds the LLM service's GPU memory)."""
    children: set[int] = set()
    try:
        for task in Path("/proc/self/task").iterdir():
            text = (task / "children").read_text()
            children.update(int(p) for p in text.split())
    except (OSError, ValueError):
        pass
    return children


class _GpuMemoryReader:
    """This process's (and its children's) GPU memory from NVML, cached for `ttl_s`: spans read it
    at the end of every served call, NVML is read at most once per TTL. None where no GPU is
    visible (no NVML, no device): then spans carry no attribute."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._value: int | None = None
        self._read_at = -float("inf")

    def __call__(self) -> int | None:
        now = time.monotonic()
        if now - self._read_at < self._ttl_s:
            return self._value
        with self._lock:
            if now - self._read_at >= self._ttl_s:
                self._read_at = now
                snapshot = read_gpu_snapshot()
                pids = {os.getpid(), *_child_pids()} if snapshot.available else set()
                self._value = sum(snapshot.used_by_pid(p) for p in pids) if snapshot.available else None
        return self._value


gpu_memory_bytes = _GpuMemoryReader(GPU_MEMORY_TTL_S)


def set_gpu_memory(span: Span) -> None:
    value = gpu_memory_bytes()
    if value is not None:
        span.set_attribute(GPU_MEMORY_ATTRIBUTE, value)


# -- server side -----------------------------------------------------------------------------------


def _status_code(value: Any) -> grpc.StatusCode | None:
    if value is None or isinstance(value, grpc.StatusCode):
        return value
    for code in grpc.StatusCode:  # grpc.aio may hand back the integer
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


class _ServerSpanStatus(_WrappingInterceptor):
    """Runs inside the instrumentation's server span: sets its final status code, ERROR status
    for any non-OK outcome (an abort with status, an uncaught error, a cancelled call), and the
    process's GPU memory."""

    @staticmethod
    def _finish(context: aio.ServicerContext[Any, Any], exc: BaseException | None) -> None:
        span = trace.get_current_span()
        if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.SERVER:
            return
        if isinstance(exc, asyncio.CancelledError):
            code, details = grpc.StatusCode.CANCELLED, "the caller cancelled or went away"
        else:
            set_code = _status_code(context.code())
            if set_code is None:
                code = grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN
            else:
                code = set_code
            details = str(context.details() or "") if code is not grpc.StatusCode.OK else ""
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name))
        set_gpu_memory(span)

    def wrap_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                result = await behavior(request, context)
            except BaseException as exc:
                self._finish(context, exc)
                raise
            self._finish(context, None)
            return result

        return call

    def wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                async for item in _drain(behavior(request, context)):
                    yield item
            except BaseException as exc:
                self._finish(context, exc)
                raise
            self._finish(context, None)

        return call


class _ServerTracing(aio.ServerInterceptor):
    """The instrumentation's server interceptor with `_ServerSpanStatus` inside its span."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._span: aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=tracer_provider, filter_=_TRACED
        )
        self._status = _ServerSpanStatus()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        async def with_status(details: grpc.HandlerCallDetails) -> Handler | None:
            return await self._status.intercept_service(continuation, details)

        handler: Handler | None = await self._span.intercept_service(with_status, handler_call_details)
        return handler


def server_interceptor(tracer_provider: trace.TracerProvider | None = None) -> aio.ServerInterceptor:
    """The tracing interceptor of a Forge server (first in the list, so its span covers the rest).
    `tracer_provider`: the process's global one unless given (tests)."""
    return _ServerTracing(tracer_provider)


def client_interceptors(
    target: str | None = None, tracer_provider: trace.TracerProvider | None = None
) -> list[aio.ClientInterceptor]:
    """Tracing interceptors for a grpc.aio channel to `target` (host:port, for span attributes)."""
    return tracing_client.aio_client_interceptors(target, tracer_provider)


def sync_client_interceptor(
    target: str | None = None, tracer_provider: trace.TracerProvider | None = None
) -> tracing_client.SyncClientTracing:
    """The same, for a blocking channel: `grpc.intercept_channel(channel, sync_client_interceptor())`."""
    return tracing_client.SyncClientTracing(target, tracer_provider)
