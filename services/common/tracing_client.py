"""Forge's own OpenTelemetry client interceptors for gRPC (asyncio channels and blocking ones).

They replace opentelemetry-instrumentation-grpc's client interceptors, which leave the span of a
cancelled unary call open forever and end an abandoned stream's span only at garbage collection,
without a CANCELLED status. Here every call gets one CLIENT span that:

- is named like the server span of the same call, "/forge.v1.LlmService/Generate" (the full gRPC
  method, as the instrumentation's server interceptor names its spans), so a client span and the
  server span under it read the same in a trace viewer;
- carries `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code` and, when the channel's
  target is known, `server.address` / `server.port`;
- is the parent of the server span: the W3C `traceparent` (and `tracestate`, baggage: whatever the
  global propagator writes) goes into the call's metadata;
- ends in the call's done callback, which gRPC runs when the call completes, fails or is
  cancelled (locally, by a deadline, or by the garbage collector), with ERROR status for every code
  but OK (CANCELLED included, as the OpenTelemetry conventions say for client spans).

Health and reflection calls are not traced.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grpc
from grpc import aio
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

log = logging.getLogger(__name__)

UNTRACED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_TRACER_NAME = "forge.grpc.client"


def _method_name(method: str | bytes) -> str:
    # grpc.aio hands interceptors bytes (https://github.com/grpc/grpc/issues/31092).
    return method.decode() if isinstance(method, bytes) else method


def traced(method: str) -> bool:
    return not method.startswith(UNTRACED_PREFIXES)


def _split_target(target: str) -> tuple[str, int | None]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return target, None
    return host.strip("[]"), int(port)


class _Spans:
    """Starts CLIENT spans and ends them from a call's final status."""

    def __init__(self, target: str | None, tracer_provider: TracerProvider | None) -> None:
        self._tracer: Tracer = trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self._peer: dict[str, str | int] = {}
        if target:
            host, port = _split_target(target)
            self._peer["server.address"] = host
            if port is not None:
                self._peer["server.port"] = port

    def start(self, method: str) -> Span:
        service, _, name = method.lstrip("/").partition("/")
        return self._tracer.start_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name, **self._peer},
        )

    @staticmethod
    def end(span: Span, code: grpc.StatusCode, details: str = "") -> None:
        """Idempotent: the SDK ignores a second end() of a span (with a warning), so callers make
        sure to call this once."""
        try:
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name))
        finally:
            span.end()


def _code_of(exc: BaseException) -> grpc.StatusCode:
    code_of = getattr(exc, "code", None)
    if isinstance(exc, grpc.RpcError) and callable(code_of):  # AioRpcError, a blocking call's error
        code = code_of()
        if isinstance(code, grpc.StatusCode):
            return code
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _metadata_with_context(metadata: Any, span: Span) -> aio.Metadata:
    """The call's metadata plus the trace context of `span` (traceparent, tracestate, baggage)."""
    out = aio.Metadata(*tuple(metadata)) if metadata else aio.Metadata()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    for key, value in carrier.items():
        out[key] = value
    return out


# -- grpc.aio -----------------------------------------------------------------------------------


def _final_code(call: Any) -> tuple[grpc.StatusCode, str]:
    """The final status of a finished grpc.aio call, read without awaiting.

    `Call.code()` and `details()` are coroutines, but once the call is done (as it is in a done
    callback) the status is already there and the coroutine returns without suspending, so it is
    driven by hand. Should a future grpc suspend here anyway, the span still ends (UNKNOWN)."""
    if call.cancelled():
        return grpc.StatusCode.CANCELLED, "cancelled by the caller"
    code = _run_ready(call.code())
    if code is None:
        return grpc.StatusCode.UNKNOWN, "final status not readable"
    details = _run_ready(call.details()) if code is not grpc.StatusCode.OK else ""
    return code, details or ""


def _run_ready(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    except Exception as exc:  # a status that cannot be read must not lose the span
        log.debug("reading a call's status failed: %s", exc)
        return None
    coro.close()
    return None


class _AioClientInterceptor:
    def __init__(self, target: str | None = None, tracer_provider: TracerProvider | None = None) -> None:
        self._spans = _Spans(target, tracer_provider)

    async def _intercept(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Any],
        details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = _method_name(details.method)
        if not traced(method):
            return await continuation(details, request)
        span = self._spans.start(method)
        traced_details = aio.ClientCallDetails(
            details.method,
            details.timeout,
            _metadata_with_context(details.metadata, span),
            details.credentials,
            details.wait_for_ready,
        )
        try:
            call = await continuation(traced_details, request)
        except BaseException as exc:  # cancelled or failed before the call existed
            _Spans.end(span, _code_of(exc), type(exc).__name__)
            raise

        def done(finished: Any) -> None:
            _Spans.end(span, *_final_code(finished))

        call.add_done_callback(done)
        return call


class UnaryUnaryTracing(_AioClientInterceptor, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class UnaryStreamTracing(_AioClientInterceptor, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._intercept(continuation, client_call_details, request)


class StreamUnaryTracing(_AioClientInterceptor, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


class StreamStreamTracing(_AioClientInterceptor, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._intercept(continuation, client_call_details, request_iterator)


def aio_client_interceptors(
    target: str | None = None, tracer_provider: TracerProvider | None = None
) -> list[aio.ClientInterceptor]:
    """One interceptor per call arity (grpc.aio files an interceptor under one arity only)."""
    return [
        UnaryUnaryTracing(target, tracer_provider),
        UnaryStreamTracing(target, tracer_provider),
        StreamUnaryTracing(target, tracer_provider),
        StreamStreamTracing(target, tracer_provider),
    ]


# -- blocking grpc (the guardrails judge calls the LLM service from a worker thread) ---------------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class SyncClientTracing(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """The same spans for a blocking channel (`grpc.intercept_channel`). The calls it returns are
    grpc.Future objects whose done callbacks run on completion, error and cancellation."""

    def __init__(self, target: str | None = None, tracer_provider: TracerProvider | None = None) -> None:
        self._spans = _Spans(target, tracer_provider)

    def _intercept(self, continuation: Callable[[Any, Any], Any], details: Any, request: Any) -> Any:
        method = _method_name(details.method)
        if not traced(method):
            return continuation(details, request)
        span = self._spans.start(method)
        metadata = list(details.metadata or ())
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata.extend(carrier.items())
        traced_details = _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
        try:
            call = continuation(traced_details, request)
        except BaseException as exc:
            _Spans.end(span, _code_of(exc), type(exc).__name__)
            raise

        def done(finished: Any) -> None:
            try:
                code, details_text = finished.code(), finished.details() or ""
            except Exception:
                code, details_text = grpc.StatusCode.UNKNOWN, "final status not readable"
            _Spans.end(span, code or grpc.StatusCode.UNKNOWN, details_text)

        call.add_done_callback(done)
        return call

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return self._intercept(continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Iterator[Any]
    ) -> Any:
        return self._intercept(continuation, client_call_details, request_iterator)
