"""A refusal is an answer, not a crash: through Forge's server interceptors (tracing, metrics,
drain, error mapping) an admission refusal reaches the caller as RESOURCE_EXHAUSTED with its
details, and its SERVER span ends with the status code and message but no exception event: no
traceback is formatted for it (that formatting was most of a refusal's CPU; bench/
admission_overload.py measures the cost itself). A bug still shows its exception on the span."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc import aio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import SpanKind, StatusCode

from services.common import telemetry
from services.common.config import AdmissionConfig
from services.common.errors import InvalidArgument
from services.common.interceptors import DrainInterceptor, ErrorMappingInterceptor, MetricsInterceptor
from services.common.status import retry_details
from services.router.admission import SESSION_LIMIT, AdmissionController
from tests.spans import SpanRecorder

SERVICE = "forge.test.Refusals"


class Refusals:
    """Handlers that each ask a full admission controller for a slot, like the router's Chat."""

    def __init__(self) -> None:
        self.admission = AdmissionController(AdmissionConfig(max_sessions=1))

    async def unary(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        async with self.admission.session("t"):
            return b"admitted"

    async def stream(
        self, request: bytes, context: aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async with self.admission.session("t"):
            yield b"admitted"

    async def invalid(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        raise InvalidArgument("text", "must not be empty")

    async def crash(self, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        raise RuntimeError("a bug")


Served = tuple[SpanRecorder, aio.Channel, Refusals]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    recorder = SpanRecorder()
    provider = TracerProvider()
    for processor in recorder.processors:
        provider.add_span_processor(processor)
    refusals = Refusals()
    # The server kit's order (services/common/server.py): tracing outermost, error mapping innermost.
    server = aio.server(
        interceptors=[
            telemetry.server_interceptor(provider),
            MetricsInterceptor(),
            DrainInterceptor(),
            ErrorMappingInterceptor(),
        ]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(refusals.unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(refusals.stream),
                    "Invalid": grpc.unary_unary_rpc_method_handler(refusals.invalid),
                    "Crash": grpc.unary_unary_rpc_method_handler(refusals.crash),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    holder = refusals.admission.session("holder")
    await holder.__aenter__()  # the only slot: every other request is refused
    try:
        yield recorder, channel, refusals
    finally:
        await holder.__aexit__(None, None, None)
        await channel.close()
        await server.stop(0)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


def unary(channel: aio.Channel, name: str) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method(name))


async def server_span(recorder: SpanRecorder, name: str) -> ReadableSpan:
    """The SERVER span of the one call to `name`, once it has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        found = [s for s in recorder.finished() if s.name == method(name) and s.kind is SpanKind.SERVER]
        if found:
            assert len(found) == 1, found
            return found[0]
        assert loop.time() < deadline, f"no server span for {name}"
        await asyncio.sleep(0.01)


@pytest.fixture
def formatted_tracebacks(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """Every exception formatted with traceback.format_exception from now on (what the SDK's
    record_exception does) while the test runs."""
    seen: list[BaseException] = []
    original: Callable[..., list[str]] = traceback.format_exception

    def counting(exc: Any, *args: Any, **kwargs: Any) -> list[str]:
        seen.append(exc)
        return original(exc, *args, **kwargs)

    monkeypatch.setattr(traceback, "format_exception", counting)
    return seen


async def refused(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as failure:
        result = call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    return failure.value


@pytest.mark.parametrize("name", ["Unary", "Stream"])
async def test_an_admission_refusal_ends_its_span_with_the_status_and_no_traceback(
    served: Served, name: str, formatted_tracebacks: list[BaseException]
) -> None:
    recorder, channel, refusals = served
    callable_: Any = channel.unary_stream(method(name)) if name == "Stream" else unary(channel, name)
    error = await refused(callable_(b""))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after, reason = retry_details(error)
    assert reason == SESSION_LIMIT and retry_after is not None and retry_after > 0
    span = await server_span(recorder, name)
    attributes = dict(span.attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert (attributes["rpc.service"], attributes["rpc.method"]) == (SERVICE, name)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.status.description or "").startswith("RESOURCE_EXHAUSTED: router is at its limit")
    assert span.events == (), [e.name for e in span.events]
    assert formatted_tracebacks == []
    snapshot = refusals.admission.snapshot()
    assert snapshot.active_sessions == 1 and snapshot.rejected_total[SESSION_LIMIT] == 1
    assert recorder.open.open_in() == []


async def test_bad_input_is_refused_without_a_traceback(
    served: Served, formatted_tracebacks: list[BaseException]
) -> None:
    recorder, channel, _ = served
    error = await refused(unary(channel, "Invalid")(b""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    span = await server_span(recorder, "Invalid")
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.status.status_code is StatusCode.ERROR and span.events == ()
    assert formatted_tracebacks == []


async def test_a_bug_still_records_its_exception_on_the_span(served: Served) -> None:
    recorder, channel, _ = served
    error = await refused(unary(channel, "Crash")(b""))
    assert error.code() == grpc.StatusCode.INTERNAL and "a bug" not in (error.details() or "")
    span = await server_span(recorder, "Crash")
    assert dict(span.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    (event,) = span.events
    attributes = dict(event.attributes or {})
    # The cause, not the abort that answered it.
    assert (event.name, attributes["exception.type"], attributes["exception.message"]) == (
        "exception",
        "RuntimeError",
        "a bug",
    )
    assert "in crash" in str(attributes["exception.stacktrace"])


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:57284", {"client.address": "127.0.0.1", "client.port": 57284}),
        ("ipv6:[::1]:57284", {"client.address": "::1", "client.port": 57284}),
        ("ipv6:%5B::1%5D:443,ipv4:10.0.0.1:80", {"client.address": "::1", "client.port": 443}),
        ("unix:/tmp/forge.sock", {}),
        ("", {}),
        (None, {}),
    ],
)
def test_the_server_span_names_the_caller_address(peer: str | None, expected: dict[str, object]) -> None:
    assert telemetry._peer_attributes(peer) == expected
