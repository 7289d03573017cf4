"""The router's gRPC clients against a real gRPC server that fails on purpose: what each status a
service answers becomes for the router's caller. A request the router built that a service rejects
as invalid is the router's fault (INTERNAL, counted), never the caller's INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from forge.v1 import guardrails_pb2, guardrails_pb2_grpc
from grpc import aio
from prometheus_client import REGISTRY

from services.common.errors import DeadlineExceeded, Internal, ResourceExhausted, Unavailable
from services.common.interceptors import ErrorMappingInterceptor
from services.router.clients.services import GrpcGuardrails, open_channel
from services.router.ports import Stage

ANSWERS = {
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, "text: must not be empty or only whitespace"),
    "full": (grpc.StatusCode.RESOURCE_EXHAUSTED, "busy"),
    "down": (grpc.StatusCode.UNAVAILABLE, "models still loading"),
}


class FailingGuardrails(guardrails_pb2_grpc.GuardrailsServiceServicer):
    async def Check(
        self, request: guardrails_pb2.CheckRequest, context: aio.ServicerContext[object, object]
    ) -> guardrails_pb2.CheckResponse:
        if request.text == "slow":
            await asyncio.Event().wait()  # never set: the caller's deadline cuts the call
        if request.text == "unspecified":
            return guardrails_pb2.CheckResponse(redacted_text=request.text)  # DECISION_UNSPECIFIED
        code, message = ANSWERS[request.text]
        await context.abort(code, message)
        raise AssertionError("abort raises")


@pytest.fixture(scope="module")
async def guardrails() -> AsyncIterator[GrpcGuardrails]:
    server = aio.server(interceptors=[ErrorMappingInterceptor()])
    guardrails_pb2_grpc.add_GuardrailsServiceServicer_to_server(FailingGuardrails(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = open_channel(f"127.0.0.1:{port}", "guardrails")
    yield GrpcGuardrails(channel)
    await channel.close()
    await server.stop(None)


async def test_a_rejected_request_is_internal_naming_the_service_and_counted(
    guardrails: GrpcGuardrails,
) -> None:
    def rejections() -> float:
        labels = {"dependency": "guardrails"}
        return REGISTRY.get_sample_value("forge_router_dependency_rejections_total", labels) or 0.0

    before = rejections()
    with pytest.raises(Internal) as err:
        await guardrails.check("invalid", Stage.OUTPUT, 5)
    assert str(err.value) == (
        "guardrails rejected a request the router built: text: must not be empty or only whitespace"
    )
    assert rejections() == before + 1


async def test_overload_and_outage_keep_their_meaning(guardrails: GrpcGuardrails) -> None:
    with pytest.raises(ResourceExhausted):
        await guardrails.check("full", Stage.INPUT, 5)
    with pytest.raises(Unavailable, match=r"^guardrails unavailable: UNAVAILABLE: models still loading$"):
        await guardrails.check("down", Stage.INPUT, 5)


async def test_a_service_past_the_deadline_share_is_deadline_exceeded(guardrails: GrpcGuardrails) -> None:
    with pytest.raises(DeadlineExceeded, match=r"guardrails did not answer within 0\.30s"):
        await guardrails.check("slow", Stage.INPUT, 0.3)


async def test_an_unspecified_decision_is_an_error_never_allow(guardrails: GrpcGuardrails) -> None:
    # Read as ALLOW, a service that forgot to set the decision would let every text through.
    with pytest.raises(Unavailable, match=r"guardrails unavailable: answered an unknown decision \(0\)"):
        await guardrails.check("unspecified", Stage.INPUT, 5)
