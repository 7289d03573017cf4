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

Server side: Forge's own interceptor (`_ServerTracing`, outside every other one but the API-key
check) opens the SERVER span of each call from the caller's trace context and ends it with the
call's final `rpc.grpc.status_code`, ERROR status and message for any non-OK outcome, and
`forge.gpu_memory_bytes`. Client side: Forge's own interceptors (`tracing_client`). Spans are
named by the full gRPC method, "/forge.v1.RouterService/Chat", on both sides.

An error status is an answer, not a crash: its span carries the code and the message and no
exception event. opentelemetry-instrumentation-grpc's server interceptor, used here before,
recorded the `AbortError` of every abort twice with a formatted traceback of the whole async
stack (about 1 ms of CPU per call: most of what an admission refusal cost), and set nothing for
`abort_with_status`. Only an INTERNAL or UNKNOWN outcome caused by an unexpected exception (a bug)
records that exception on the span, as the log does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextvars import Token
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
from grpc import aio
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from services.common import tracing_client
from services.common.errors import ForgeError
from services.common.gpu import read_gpu_snapshot
from services.common.interceptors import Behavior, _drain, _WrappingInterceptor

log = logging.getLogger(__name__)

# Instrumentation scope of the server spans. Health checks and reflection are not traced (they
# would drown the real traffic): `_WrappingInterceptor` leaves them alone.
_SERVER_TRACER = "forge.grpc.server"
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


def _peer_attributes(peer: str | None) -> dict[str, AttributeValue]:
    """client.address / client.port from a gRPC peer such as "ipv4:127.0.0.1:57284" or
    "ipv6:[::1]:57284" (the first of a comma-separated list); nothing for "unix:" or the unknown."""
    if not peer or peer.startswith("unix:"):
        return {}
    _, _, address = peer.split(",", 1)[0].partition(":")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return {}
    return {"client.address": unquote(host).strip("[]"), "client.port": int(port)}


def _unexpected_cause(exc: BaseException) -> BaseException | None:
    """The exception behind an INTERNAL or UNKNOWN outcome when it is a bug (not a domain error,
    not the abort itself): the trace shows it, as the log does."""
    cause = (exc.__cause__ or exc.__context__) if isinstance(exc, aio.AbortError) else exc
    if isinstance(cause, Exception) and not isinstance(cause, ForgeError | aio.AbortError):
        return cause
    return None


class _ServerTracing(_WrappingInterceptor):
    """The SERVER span of every call but health and reflection, child of the caller's trace
    context (traceparent, tracestate, baggage: whatever the global propagator reads), current
    while the handler runs. It ends when the call does, with its final `rpc.grpc.status_code`,
    ERROR status and the status message for any non-OK outcome (an abort, an uncaught error, a
    cancelled call), and the process's GPU memory."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_SERVER_TRACER, tracer_provider=tracer_provider)

    def _start(self, method: str, context: aio.ServicerContext[Any, Any]) -> tuple[Span, Token[Context]]:
        metadata = context.invocation_metadata()
        parent = propagate.extract({key: value for key, value in metadata}) if metadata else None
        service, _, name = method.lstrip("/").partition("/")
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            **_peer_attributes(context.peer()),
        }
        span = self._tracer.start_span(method, parent, SpanKind.SERVER, attributes)
        return span, otel_context.attach(trace.set_span_in_context(span, parent))

    @staticmethod
    def _end(
        span: Span, token: Token[Context], context: aio.ServicerContext[Any, Any], exc: BaseException | None
    ) -> None:
        try:
            if isinstance(exc, asyncio.CancelledError | GeneratorExit):
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
            cause = _unexpected_cause(exc) if exc is not None else None
            if cause is not None and code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                span.record_exception(cause, escaped=True)
            set_gpu_memory(span)
        finally:
            otel_context.detach(token)
            span.end()

    def wrap_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            span, token = self._start(method, context)
            try:
                result = await behavior(request, context)
            except BaseException as exc:
                self._end(span, token, context, exc)
                raise
            self._end(span, token, context, None)
            return result

        return call

    def wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            span, token = self._start(method, context)
            try:
                async for item in _drain(behavior(request, context)):
                    yield item
            except BaseException as exc:
                self._end(span, token, context, exc)
                raise
            self._end(span, token, context, None)

        return call


def server_interceptor(tracer_provider: trace.TracerProvider | None = None) -> aio.ServerInterceptor:
    """The tracing interceptor of a Forge server (before the others, so its span covers them).
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
