"""The server kit's interceptors on a real loopback gRPC server, with test servicers that raise."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from forge.v1 import common_pb2, embed_pb2, embed_pb2_grpc, llm_pb2, llm_pb2_grpc
from google.rpc import code_pb2, error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from services.common.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from services.common.interceptors import DrainInterceptor, ErrorMappingInterceptor, MetricsInterceptor
from services.common.status import INTERNAL_ERROR_MESSAGE

ERRORS: dict[str, Exception] = {
    "invalid": InvalidArgument("texts[3]", "must be at most 8192 characters, got 9000"),
    "busy": ResourceExhausted("SESSION_LIMIT", "all 8 sessions are in use", retry_after_s=2.5),
    "down": Unavailable("milvus", "connection refused"),
    "late": DeadlineExceeded("the deadline passed during retrieval"),
    "missing": NotFound("collection 'x' does not exist"),
    "bug": KeyError("secret internal detail"),
    "ours": Internal("llm rejected a request the router built: params.stop[0]: must be 1 to 64 characters"),
}


class RaisingEmbed(embed_pb2_grpc.EmbedServiceServicer):
    async def Embed(self, request: embed_pb2.EmbedRequest, context: object) -> embed_pb2.EmbedResponse:
        raise ERRORS[request.texts[0]]


class StreamThenRaise(llm_pb2_grpc.LlmServiceServicer):
    async def Generate(
        self, request: llm_pb2.GenerateRequest, context: object
    ) -> AsyncIterator[llm_pb2.GenerateResponse]:
        yield llm_pb2.GenerateResponse(text="partial ")
        raise ERRORS[request.prompt]

    async def Tokenize(self, request: llm_pb2.TokenizeRequest, context: object) -> llm_pb2.TokenizeResponse:
        raise NotImplementedError

    async def GetModelInfo(
        self, request: llm_pb2.GetModelInfoRequest, context: object
    ) -> llm_pb2.GetModelInfoResponse:
        raise NotImplementedError


@pytest.fixture(scope="module")
async def channel() -> AsyncIterator[aio.Channel]:
    drain = DrainInterceptor()
    server = aio.server(interceptors=[MetricsInterceptor(), drain, ErrorMappingInterceptor()])
    embed_pb2_grpc.add_EmbedServiceServicer_to_server(RaisingEmbed(), server)
    llm_pb2_grpc.add_LlmServiceServicer_to_server(StreamThenRaise(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield ch
    await server.stop(None)


async def call_embed(channel: aio.Channel, key: str) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as failure:
        await embed_pb2_grpc.EmbedServiceStub(channel).Embed(embed_pb2.EmbedRequest(texts=[key]))
    return failure.value


def details(err: aio.AioRpcError) -> list[object]:
    status = rpc_status.from_call(err)
    assert status is not None, "status details missing"
    out: list[object] = []
    for any_detail in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo, error_details_pb2.ErrorInfo):
            if any_detail.Is(kind.DESCRIPTOR):
                msg = kind()
                any_detail.Unpack(msg)
                out.append(msg)
    return out


async def test_invalid_argument_names_field_and_limit(channel: aio.Channel) -> None:
    err = await call_embed(channel, "invalid")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "texts[3]: must be at most 8192 characters, got 9000"
    (bad_request,) = details(err)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == "texts[3]"


async def test_overload_carries_retry_info_and_reason(channel: aio.Channel) -> None:
    err = await call_embed(channel, "busy")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry, info = details(err)
    assert isinstance(retry, error_details_pb2.RetryInfo) and isinstance(info, error_details_pb2.ErrorInfo)
    assert retry.retry_delay.ToMilliseconds() == 2500
    assert info.reason == "SESSION_LIMIT" and info.domain == "forge.v1"


async def test_dependency_down_is_unavailable_naming_it(channel: aio.Channel) -> None:
    err = await call_embed(channel, "down")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "milvus" in (err.details() or "")
    _, info = details(err)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.metadata["dependency"] == "milvus"


@pytest.mark.parametrize(
    ("key", "code"), [("late", grpc.StatusCode.DEADLINE_EXCEEDED), ("missing", grpc.StatusCode.NOT_FOUND)]
)
async def test_other_domain_errors(channel: aio.Channel, key: str, code: grpc.StatusCode) -> None:
    assert (await call_embed(channel, key)).code() == code


async def test_a_known_internal_fault_is_internal_and_says_what_it_was(channel: aio.Channel) -> None:
    err = await call_embed(channel, "ours")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == str(ERRORS["ours"])


async def test_unexpected_exception_is_internal_without_internals(channel: aio.Channel) -> None:
    err = await call_embed(channel, "bug")
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == INTERNAL_ERROR_MESSAGE
    assert "secret" not in (err.details() or "") and "Traceback" not in (err.details() or "")


async def test_streaming_error_after_data_keeps_the_data_and_maps_the_status(channel: aio.Channel) -> None:
    received: list[str] = []
    call = llm_pb2_grpc.LlmServiceStub(channel).Generate(llm_pb2.GenerateRequest(prompt="busy"))
    with pytest.raises(aio.AioRpcError) as failure:
        async for reply in call:
            received.append(reply.text)
    assert received == ["partial "]
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert common_pb2.FINISH_REASON_UNSPECIFIED == 0  # the enum exists for the final message


async def test_rejected_codes_are_counted(channel: aio.Channel) -> None:
    from services.common import metrics

    before = metrics.GRPC_HANDLED.labels("forge.v1.EmbedService", "Embed", "INVALID_ARGUMENT")._value.get()
    await call_embed(channel, "invalid")
    after = metrics.GRPC_HANDLED.labels("forge.v1.EmbedService", "Embed", "INVALID_ARGUMENT")._value.get()
    assert after == before + 1


def test_status_codes_match_google_rpc() -> None:
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == code_pb2.RESOURCE_EXHAUSTED
