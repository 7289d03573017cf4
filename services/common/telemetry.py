"""OpenTelemetry tracing: one tracer provider per process and the gRPC interceptors.

Export is configured by the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT,
OTEL_TRACES_EXPORTER=otlp|console|none, OTEL_TRACES_SAMPLER...). With none set, spans are
created (trace ids still propagate across hops) but nothing is exported and nothing fails.
"""

from __future__ import annotations

import logging
import os

from grpc import aio
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

log = logging.getLogger(__name__)

# Health checks and reflection would drown the real traffic in traces.
_TRACED = filters.negate(
    filters.any_of(filters.service_prefix("grpc.health.v1"), filters.service_prefix("grpc.reflection"))
)


def _exporter_from_env() -> SpanExporter | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint_set = any(
        os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp" or (choice == "" and endpoint_set):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return None


def configure_tracing(service: str) -> None:
    """Install the process's tracer provider once; later calls (several servers in one test
    process) keep the first."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"forge-{service}"}))
    exporter = _exporter_from_env()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("exporting traces with %s", type(exporter).__name__)
    trace.set_tracer_provider(provider)


def server_interceptor() -> aio.ServerInterceptor:
    return aio_server_interceptor(filter_=_TRACED)  # type: ignore[no-untyped-call,no-any-return]


def client_interceptors() -> list[aio.ClientInterceptor]:
    return aio_client_interceptors(filter_=_TRACED)  # type: ignore[no-untyped-call,no-any-return]


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()
