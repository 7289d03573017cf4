"""Server interceptors that wrap every Forge RPC handler: error mapping and RPC metrics.

Error mapping turns domain errors into statuses with details and any other exception into
INTERNAL (logged, never sent as a stack trace, never UNKNOWN). Health and reflection handlers are
left alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from grpc import aio

from services.common import metrics
from services.common.errors import ForgeError, Internal, PermissionDenied, Unauthenticated, Unavailable
from services.common.security.access import CURRENT_CALLER, TENANT_HEADER, authorize
from services.common.security.keys import KeyRing
from services.common.status import internal_status, status_for

log = logging.getLogger(__name__)

UNWRAPPED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# Calls that need no API key: health, for load balancers and Kubernetes probes.
OPEN_PREFIXES = ("/grpc.health.v1.",)

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Any]


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _wrap(
    handler: Handler,
    unary: Callable[[Behavior], Behavior],
    stream: Callable[[Behavior], Behavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """The same handler with its behaviour wrapped; `stream` wraps response-streaming ones."""
    kwargs: dict[str, Any] = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    # Under grpc.aio the behaviours are coroutine functions or async generators.
    behaviors: dict[str, Any] = {
        "unary_unary": handler.unary_unary,
        "unary_stream": handler.unary_stream,
        "stream_unary": handler.stream_unary,
        "stream_stream": handler.stream_stream,
    }
    if behaviors["unary_unary"]:
        return grpc.unary_unary_rpc_method_handler(unary(behaviors["unary_unary"]), **kwargs)
    if behaviors["unary_stream"]:
        return grpc.unary_stream_rpc_method_handler(stream(behaviors["unary_stream"]), **kwargs)
    if behaviors["stream_unary"]:
        return grpc.stream_unary_rpc_method_handler(unary(behaviors["stream_unary"]), **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream(behaviors["stream_stream"]), **kwargs)


async def _drain(result: Any) -> AsyncIterator[Any]:
    """Yield from a streaming behaviour, whether it yields or writes through the context."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result


class _WrappingInterceptor(aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(UNWRAPPED_PREFIXES):
            return handler
        return _wrap(handler, lambda b: self.wrap_unary(method, b), lambda b: self.wrap_stream(method, b))

    def wrap_unary(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError

    def wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError


class ErrorMappingInterceptor(_WrappingInterceptor):
    @staticmethod
    async def _abort(context: aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
        if isinstance(exc, ForgeError):
            if isinstance(exc, Internal):  # our bug, said in words: the log must show it too
                log.error("internal error in %s: %s", method, exc)
            await context.abort_with_status(status_for(exc))
        log.exception("unexpected error in %s", method, exc_info=exc)
        await context.abort_with_status(internal_status())

    def wrap_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                return await behavior(request, context)
            except (aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await self._abort(context, method, exc)

        return call

    def wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                async for item in _drain(behavior(request, context)):
                    yield item
            except (aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await self._abort(context, method, exc)

        return call


class MetricsInterceptor(_WrappingInterceptor):
    """forge_grpc_server_{started,handled}_total and handling-time histograms per method."""

    @staticmethod
    def _split(method: str) -> tuple[str, str]:
        service, _, name = method.lstrip("/").partition("/")
        return service, name

    @staticmethod
    def _code(context: aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
        if isinstance(exc, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED.name
        code: Any = context.code()
        if code is None:
            return grpc.StatusCode.OK.name if exc is None else grpc.StatusCode.UNKNOWN.name
        status = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code)
        return str(status.name)

    def _done(
        self, method: str, context: aio.ServicerContext[Any, Any], started: float, exc: BaseException | None
    ) -> None:
        service, name = self._split(method)
        code = self._code(context, exc)
        metrics.GRPC_HANDLED.labels(service, name, code).inc()
        metrics.GRPC_HANDLING_SECONDS.labels(service, name).observe(time.perf_counter() - started)

    def wrap_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            metrics.GRPC_STARTED.labels(*self._split(method)).inc()
            started = time.perf_counter()
            try:
                result = await behavior(request, context)
            except BaseException as exc:
                self._done(method, context, started, exc)
                raise
            self._done(method, context, started, None)
            return result

        return call

    def wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            metrics.GRPC_STARTED.labels(*self._split(method)).inc()
            started = time.perf_counter()
            try:
                async for item in _drain(behavior(request, context)):
                    yield item
            except BaseException as exc:
                self._done(method, context, started, exc)
                raise
            self._done(method, context, started, None)

        return call


class DrainInterceptor(_WrappingInterceptor):
    """Counts in-flight calls and, once draining, refuses new ones with UNAVAILABLE + RetryInfo.

    gRPC's own `server.stop(grace)` would also wait for never-ending health Watch streams; this
    lets the server wait for real work only.
    """

    def __init__(self) -> None:
        self.inflight = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when every in-flight call finished within `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _enter(self, context: aio.ServicerContext[Any, Any]) -> None:
        if self.draining:
            await context.abort_with_status(
                status_for(Unavailable("server", "draining for shutdown; retry on another replica"))
            )
        self.inflight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    def wrap_unary(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            await self._enter(context)
            try:
                return await behavior(request, context)
            finally:
                self._leave()

        return call

    def wrap_stream(self, method: str, behavior: Behavior) -> Behavior:
        async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            await self._enter(context)
            try:
                async for item in _drain(behavior(request, context)):
                    yield item
            finally:
                self._leave()

        return call


@dataclass(frozen=True)
class Undecodable:
    """What a request body that does not parse becomes, so the call can be refused in words."""

    message_type: str
    error: str


def _message_type(deserializer: Callable[[bytes], Any] | None, method: str) -> str:
    cls = getattr(deserializer, "__self__", None)  # FooRequest.FromString
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return str(descriptor.full_name) if descriptor is not None else f"the request of {method}"


class DecodingInterceptor(aio.ServerInterceptor):
    """A body that is not the request message gets INVALID_ARGUMENT naming the message type, on
    every method (health and reflection too). grpc.aio decodes before any handler runs and would
    answer UNKNOWN "Unexpected <class 'DecodeError'>"."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        deserializer = handler.request_deserializer if handler is not None else None
        if handler is None or deserializer is None:
            return handler
        type_name = _message_type(deserializer, handler_call_details.method)

        def decode(data: bytes) -> Any:
            try:
                return deserializer(data)
            except Exception as exc:  # DecodeError, and anything a custom deserializer raises
                return Undecodable(type_name, str(exc) or type(exc).__name__)

        def refuse_message(bad: Undecodable) -> str:
            return f"request body is not a valid {bad.message_type}: {bad.error}"

        async def checked(requests: AsyncIterator[Any], context: aio.ServicerContext[Any, Any]) -> Any:
            async for request in requests:
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refuse_message(request))
                yield request

        streaming_requests = handler.request_streaming

        def unary(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                if streaming_requests:
                    return await behavior(checked(request, context), context)
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refuse_message(request))
                return await behavior(request, context)

            return call

        def stream(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                if streaming_requests:
                    request = checked(request, context)
                elif isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refuse_message(request))
                async for item in _drain(behavior(request, context)):
                    yield item

            return call

        return _wrap(handler, unary, stream, decode)


def _refusal(handler: Handler, code: grpc.StatusCode, message: str) -> Handler:
    """A handler of the same kind that refuses without reading the request."""

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream)
    return grpc.unary_unary_rpc_method_handler(unary)


class AuthInterceptor(aio.ServerInterceptor):
    """API keys on a public port, checked before anything else reads the call: a refused call is
    never decoded, traced or counted as work. Health stays open for probes. Each call let through
    runs with its `Caller` in CURRENT_CALLER."""

    def __init__(self, keys: KeyRing, admin_services: frozenset[str]) -> None:
        self.keys = keys
        self.admin_services = admin_services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        authorization = tenant = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode(errors="replace")
            elif key == TENANT_HEADER:
                tenant = value if isinstance(value, str) else value.decode(errors="replace")
        service = method.lstrip("/").partition("/")[0]
        try:
            caller = authorize(self.keys, authorization, tenant, service in self.admin_services)
        except Unauthenticated as exc:
            metrics.AUTH_REFUSALS.labels("unauthenticated").inc()
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except PermissionDenied as exc:
            metrics.AUTH_REFUSALS.labels("permission_denied").inc()
            return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, str(exc))

        def unary(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
                CURRENT_CALLER.set(caller)
                return await behavior(request, context)

            return call

        def stream(behavior: Behavior) -> Behavior:
            async def call(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                CURRENT_CALLER.set(caller)
                async for item in _drain(behavior(request, context)):
                    yield item

            return call

        return _wrap(handler, unary, stream)
