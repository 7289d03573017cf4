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
from typing import Any, TypeAlias

import grpc
from grpc import aio

from services.common import metrics
from services.common.errors import ForgeError, Internal, Unavailable
from services.common.status import internal_status, status_for

log = logging.getLogger(__name__)

UNWRAPPED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

Behavior = Callable[[Any, aio.ServicerContext[Any, Any]], Any]


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def _wrap(
    handler: Handler, unary: Callable[[Behavior], Behavior], stream: Callable[[Behavior], Behavior]
) -> Handler:
    """The same handler with its behaviour wrapped; `stream` wraps response-streaming ones."""
    kwargs: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
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
