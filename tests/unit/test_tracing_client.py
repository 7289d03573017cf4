"""Forge's gRPC tracing against a trivial in-process server: every client span ends (completed,
failed, cancelled, abandoned), server spans get the final status, the trace context crosses the
hop, and the OTEL_* environment decides export and sampling (none set: no exporter, no error)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcOtlpExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpOtlpExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from services.common import telemetry
from services.common.errors import InvalidArgument
from services.common.gpu import read_gpu_snapshot
from services.common.interceptors import ErrorMappingInterceptor
from tests.spans import SpanRecorder

SERVICE = "forge.test.Echo"


class Tracing:
    def __init__(self) -> None:
        self.provider = TracerProvider()
        self.recorder = SpanRecorder()
        for processor in self.recorder.processors:
            self.provider.add_span_processor(processor)
        self.exporter = self.recorder.exporter
        self.open = self.recorder.open

    def spans(self, name: str | None = None, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return [
            s
            for s in self.exporter.get_finished_spans()
            if (name is None or s.name == name) and (kind is None or s.kind == kind)
        ]

    def one(self, name: str, kind: SpanKind) -> ReadableSpan:
        found = self.spans(name, kind)
        assert len(found) == 1, [(s.name, s.kind) for s in self.exporter.get_finished_spans()]
        return found[0]


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


class Handlers:
    def __init__(self) -> None:
        self.stream_started = asyncio.Event()
        self.slow_started = asyncio.Event()

    async def echo(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        metadata = dict(context.invocation_metadata() or ())
        return str(metadata.get("traceparent", "")).encode()

    async def slow(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        self.slow_started.set()
        await asyncio.Event().wait()  # until the caller cancels or its deadline passes
        return b"late"

    async def invalid(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        raise InvalidArgument("text", "must not be empty")

    async def crash(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        raise RuntimeError("a bug")

    async def stream(
        self, request: bytes, context: aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        for i in range(int(request or b"1000")):
            self.stream_started.set()
            yield str(i).encode()
            await asyncio.sleep(0.01)


# The recorder, a traced channel to the echo server, its handlers, and its address.
Echo = tuple[Tracing, aio.Channel, Handlers, str]


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    tracing = Tracing()
    handlers = Handlers()
    server = aio.server(
        interceptors=[telemetry.server_interceptor(tracing.provider), ErrorMappingInterceptor()]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": grpc.unary_unary_rpc_method_handler(handlers.echo),
                    "Slow": grpc.unary_unary_rpc_method_handler(handlers.slow),
                    "Invalid": grpc.unary_unary_rpc_method_handler(handlers.invalid),
                    "Crash": grpc.unary_unary_rpc_method_handler(handlers.crash),
                    "Stream": grpc.unary_stream_rpc_method_handler(handlers.stream),
                },
            )
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(
        target, interceptors=telemetry.client_interceptors(target, tracing.provider)
    )
    try:
        yield tracing, channel, handlers, target
    finally:
        await channel.close()
        await server.stop(0)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def unary(channel: aio.Channel, name: str) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method(name))


def streaming(channel: aio.Channel, name: str) -> aio.UnaryStreamMultiCallable[bytes, bytes]:
    return channel.unary_stream(method(name))


def both_spans_ended(tracing: Tracing, name: str) -> Callable[[], bool]:
    return lambda: len(tracing.spans(method(name))) == 2


async def test_a_completed_call_is_one_trace_across_the_hop(echo: Echo) -> None:
    tracing, channel, _, target = echo
    traceparent = (await unary(channel, "Echo")(b"hi")).decode()
    await eventually(lambda: len(tracing.spans()) == 2, "client and server span")
    client = tracing.one(method("Echo"), SpanKind.CLIENT)
    server = tracing.one(method("Echo"), SpanKind.SERVER)
    assert client.context is not None and server.context is not None and server.parent is not None
    assert traceparent.startswith(f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-")
    assert server.context.trace_id == client.context.trace_id
    assert server.parent.span_id == client.context.span_id
    assert client.status.status_code is StatusCode.UNSET and server.status.status_code is StatusCode.UNSET
    host, port = target.split(":")
    assert dict(client.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
        "server.address": host,
        "server.port": int(port),
    }
    assert tracing.open.open == {}


async def test_a_cancelled_unary_call_ends_its_spans_as_cancelled(echo: Echo) -> None:
    tracing, channel, handlers, _ = echo
    slow = unary(channel, "Slow")

    async def call() -> bytes:
        result: bytes = await slow(b"")
        return result

    task = asyncio.create_task(call())
    await asyncio.wait_for(handlers.slow_started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: len(tracing.spans()) == 2, "both spans ended")
    for kind in (SpanKind.CLIENT, SpanKind.SERVER):
        span = tracing.one(method("Slow"), kind)
        assert span.status.status_code is StatusCode.ERROR, kind
        assert (span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0], kind
    assert tracing.open.open == {}


async def test_a_unary_call_cancelled_at_once_leaves_no_span_open(echo: Echo) -> None:
    tracing, channel, _, _ = echo
    call = unary(channel, "Echo")(b"")
    call.cancel()  # before or while the interceptors run
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.05)
    assert tracing.open.open == {}
    for client in tracing.spans(method("Echo"), SpanKind.CLIENT):  # none if it never started
        assert client.status.status_code is StatusCode.ERROR


async def test_a_stream_cancelled_mid_way_ends_its_spans_as_cancelled(echo: Echo) -> None:
    tracing, channel, _, _ = echo
    call = streaming(channel, "Stream")(b"")
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            break
    assert tracing.spans(method("Stream"), SpanKind.CLIENT) == []  # still running
    call.cancel()
    await eventually(lambda: len(tracing.spans(method("Stream"))) == 2, "both spans ended")
    client = tracing.one(method("Stream"), SpanKind.CLIENT)
    assert client.status.status_code is StatusCode.ERROR
    assert client.status.description is not None and "CANCELLED" in client.status.description
    assert (client.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    server = tracing.one(method("Stream"), SpanKind.SERVER)
    assert (server.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert tracing.open.open == {}


async def test_an_abandoned_stream_ends_its_span_when_its_channel_closes(echo: Echo) -> None:
    """grpc.aio keeps a stream that is neither read to the end nor cancelled alive (garbage
    collection does not end it); its span ends with the call: deadline, or channel close."""
    tracing, _, _, target = echo
    channel = aio.insecure_channel(
        target, interceptors=telemetry.client_interceptors(target, tracing.provider)
    )
    call = streaming(channel, "Stream")(b"")
    async for _ in call:
        break  # never read the rest, never cancel
    del call
    gc.collect()
    await channel.close()
    await eventually(lambda: tracing.open.open == {}, "no open span")
    client = tracing.one(method("Stream"), SpanKind.CLIENT)
    assert (client.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_failed_calls_get_error_status_on_both_sides(echo: Echo) -> None:
    tracing, channel, _, _ = echo
    for name, code in (("Invalid", grpc.StatusCode.INVALID_ARGUMENT), ("Crash", grpc.StatusCode.INTERNAL)):
        with pytest.raises(aio.AioRpcError) as failure:
            await unary(channel, name)(b"")
        assert failure.value.code() == code
        await eventually(both_spans_ended(tracing, name), f"{name} spans")
        for kind in (SpanKind.CLIENT, SpanKind.SERVER):
            span = tracing.one(method(name), kind)
            assert span.status.status_code is StatusCode.ERROR, (name, kind)
            assert span.status.description is not None and code.name in span.status.description
            assert (span.attributes or {})["rpc.grpc.status_code"] == code.value[0], (name, kind)
    assert tracing.open.open == {}


async def test_a_deadline_ends_the_client_span(echo: Echo) -> None:
    tracing, channel, _, _ = echo
    with pytest.raises(aio.AioRpcError) as failure:
        await unary(channel, "Slow")(b"", timeout=0.2)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: len(tracing.spans(method("Slow"))) == 2, "both spans ended")
    client = tracing.one(method("Slow"), SpanKind.CLIENT)
    code = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert client.status.status_code is StatusCode.ERROR
    assert (client.attributes or {})["rpc.grpc.status_code"] == code


async def test_health_checks_are_not_traced(echo: Echo) -> None:
    tracing, channel, _, _ = echo
    stub = health_pb2_grpc.HealthStub(channel)
    await stub.Check(health_pb2.HealthCheckRequest())
    await asyncio.sleep(0.05)
    assert tracing.spans() == [] and tracing.open.open == {}


async def test_blocking_channel_spans_end_on_completion_and_cancel(echo: Echo) -> None:
    tracing, _, _, target = echo
    with grpc.insecure_channel(target) as raw:
        channel = grpc.intercept_channel(raw, telemetry.sync_client_interceptor(target, tracing.provider))
        stream: grpc.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(method("Stream"))
        echo_call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method("Echo"))

        def blocking() -> tuple[str, list[bytes]]:
            traceparent = echo_call(b"").decode()
            call = stream(b"")
            first = [next(call), next(call)]
            call.cancel()
            return traceparent, first

        traceparent, first = await asyncio.to_thread(blocking)
    assert first == [b"0", b"1"]
    await eventually(lambda: tracing.open.open == {}, "no open span")
    echo_client = tracing.one(method("Echo"), SpanKind.CLIENT)
    assert echo_client.context is not None and f"{echo_client.context.span_id:016x}" in traceparent
    stream_client = tracing.one(method("Stream"), SpanKind.CLIENT)
    assert (stream_client.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


# -- the environment --------------------------------------------------------------------------------

OTEL_VARS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_otel_settings_means_no_exporter_and_no_error(clean_env: pytest.MonkeyPatch) -> None:
    assert telemetry._exporter_from_env() is None
    provider = telemetry.build_provider("test")
    assert isinstance(provider.sampler, ParentBased)  # parentbased_always_on, the SDK default
    with provider.get_tracer("t").start_as_current_span("work") as span:
        assert span.get_span_context().trace_id != 0  # ids still exist (and propagate)
    assert provider.force_flush()
    provider.shutdown()


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, ConsoleSpanExporter),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, GrpcOtlpExporter),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, GrpcOtlpExporter),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
            HttpOtlpExporter,
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, None),
    ],
)
def test_exporter_follows_the_standard_variables(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], exporter: type[SpanExporter] | None
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    made = telemetry._exporter_from_env()
    if exporter is None:
        assert made is None
    else:
        assert isinstance(made, exporter)
        made.shutdown()


def test_sampling_follows_the_standard_variables(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    clean_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    sampler = telemetry.build_provider("test").sampler
    assert isinstance(sampler, TraceIdRatioBased) and sampler.rate == 0.25
    clean_env.setenv("OTEL_TRACES_SAMPLER", "always_off")
    provider = telemetry.build_provider("test")
    with provider.get_tracer("t").start_as_current_span("work") as span:
        assert not span.is_recording()


def test_gpu_memory_attribute_is_skipped_without_a_gpu() -> None:
    reader = telemetry._GpuMemoryReader(ttl_s=60)
    snapshot_has_gpu = read_gpu_snapshot().available
    value = reader()
    assert (value is None) == (not snapshot_has_gpu)
    with contextlib.suppress(Exception):
        assert reader() == value  # cached
