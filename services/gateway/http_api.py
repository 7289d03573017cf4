"""The OpenAI-compatible HTTP API (FastAPI): each route is one router call (or, where the router
has no RPC for it, a key check on the router and then one mesh call), its answer in OpenAI's
shape, its failure as OpenAI's error JSON (errors.py says which status).

A chat's HTTP status is decided by the router's first message: the response (stream or not)
starts only once the router has admitted the chat and said something, so a refusal (a full
appliance, a bad key, bad input) is a real status code, not an event inside a 200 stream. A
client that goes away cancels the router call, which frees its session at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from forge.v1 import router_pb2
from google.protobuf import json_format
from grpc import aio
from opentelemetry import trace
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from services.gateway import codec, metrics
from services.gateway.errors import HttpError, HttpFailure, error_body, http_failure
from services.gateway.observe import BodyTooLarge, Observe
from services.gateway.request_cap import RequestCap
from services.gateway.rpc import ChatCall, Upstream, failure_of, forwarded

log = logging.getLogger(__name__)

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"
# Nginx and friends buffer responses by default; an SSE stream must go out as it is written.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The HTTP client disconnected while the gateway waited on the router."""


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def failure_response(failure: HttpFailure) -> JSONResponse:
    return JSONResponse(failure.body, failure.status, failure.headers)


async def _disconnect(receive: Receive) -> None:
    """Returns once the client has gone (the body was read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(request: Request, work: Awaitable[T]) -> T:
    """`work`, or ClientGone (with `work` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request.receive))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task not in done:
        task.cancel()
        raise ClientGone
    return task.result()


def current_trace_id() -> str:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class ChatStream(StreamingResponse):
    """The SSE response of a chat; however it ends (done, client gone before or during the
    stream), the router call is cancelled, a no-op once it has finished."""

    def __init__(self, events: AsyncIterator[bytes], call: ChatCall) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self._call = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._call.cancel()


def _chat_events(
    call: ChatCall, first: Any, completion_id: str, model: str, created: int
) -> AsyncIterator[bytes]:
    async def events() -> AsyncIterator[bytes]:
        yield sse(codec.chunk(completion_id, model, created, {"role": "assistant", "content": ""}))
        event = first
        try:
            while event is not aio.EOF:
                assert isinstance(event, router_pb2.ChatResponse)
                if event.HasField("summary"):
                    yield sse(codec.chunk(completion_id, model, created, {}, event.summary))
                else:
                    yield sse(codec.chunk(completion_id, model, created, {"content": event.delta}))
                event = await call.read()
        except aio.AioRpcError as err:
            # The status line went out with the first chunk: the error is an event, as OpenAI's
            # clients read it (they raise APIError on a `data` object with an `error` key).
            failure = failure_of(err)
            metrics.STREAM_ERRORS.labels(failure.code).inc()
            yield sse(http_failure(failure).body)
        yield DONE

    return events()


def create_app(upstream: Upstream, max_body_bytes: int, max_requests: int) -> FastAPI:
    app = FastAPI(title="Forge (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> Response:
        return failure_response(exc.failure)

    @app.exception_handler(aio.AioRpcError)
    async def _rpc_error(request: Request, exc: aio.AioRpcError) -> Response:
        return failure_response(http_failure(failure_of(exc)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # OpenAI answers a malformed request with 400, not FastAPI's 422.
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
            return failure_response(
                HttpFailure(400, error_body(message, "invalid_request_error", None, "json_invalid"))
            )
        param = ".".join(loc[1:]) or None  # loc starts with "body"
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return failure_response(
            HttpFailure(400, error_body(message, "invalid_request_error", param, "invalid_argument"))
        )

    @app.exception_handler(HTTPException)
    async def _starlette(request: Request, exc: HTTPException) -> Response:
        if isinstance(exc.__cause__, BodyTooLarge):
            body = error_body(str(exc.__cause__), "invalid_request_error", None, "request_too_large")
            return failure_response(HttpFailure(413, body))
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = "not_found" if exc.status_code == 404 else None
        return failure_response(HttpFailure(exc.status_code, error_body(str(exc.detail), type_, None, code)))

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the router call was cancelled

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        body = error_body("internal error; the gateway log has the details", "server_error", None, "internal")
        return failure_response(HttpFailure(500, body))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: codec.ChatCompletionRequest, request: Request) -> Response:
        call = upstream.chat(codec.chat_request(body), forwarded(request.headers))
        created, completion_id = int(time.time()), codec.completion_id(current_trace_id())
        try:
            first = await unless_gone(request, call.read())
            if body.stream:
                return ChatStream(_chat_events(call, first, completion_id, body.model, created), call)
            text: list[str] = []

            async def rest() -> router_pb2.ChatSummary:
                event = first
                while event is not aio.EOF:
                    assert isinstance(event, router_pb2.ChatResponse)
                    if event.HasField("summary"):
                        return event.summary
                    text.append(event.delta)
                    event = await call.read()
                body = error_body(
                    "the router's answer ended without its summary", "server_error", None, "bad_gateway"
                )
                raise HttpError(HttpFailure(502, body))

            summary = await unless_gone(request, rest())
        except BaseException:
            call.cancel()
            raise
        answer = codec.completion(
            body.model, summary.trace_id or current_trace_id(), created, "".join(text), summary
        )
        return JSONResponse(answer)

    @app.post("/v1/embeddings")
    async def embeddings(body: codec.EmbeddingsRequest, request: Request) -> Response:
        texts = codec.embed_texts(body)
        await upstream.check_key(forwarded(request.headers))
        response = await upstream.embed(texts, codec.embed_kind(body))
        return JSONResponse(codec.embeddings(body, response))

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        await upstream.check_key(forwarded(request.headers))
        llm, embed = await asyncio.gather(upstream.llm_model(), upstream.embed_info())
        names = [llm.model, *([embed.settings["model"]] if "model" in embed.settings else [])]
        return JSONResponse(codec.models(names))

    @app.get("/v1/gpu/stats")
    async def gpu_stats(request: Request) -> Response:
        stats = await upstream.gpu_stats(forwarded(request.headers))
        return JSONResponse(
            json_format.MessageToDict(
                stats, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )

    # Observe is outermost (added last): a request refused by the cap is still counted and traced.
    app.add_middleware(RequestCap, max_requests=max_requests)
    app.add_middleware(Observe, max_body_bytes=max_body_bytes)
    return app
