"""gRPC clients of the LLM, embeddings and guardrails services, behind the domain ports.

Each call carries the timeout the use case carved from the caller's deadline; gRPC failures
become domain errors naming the dependency (UNAVAILABLE "llm unavailable: ..."), so the router's
own error mapping answers the caller with a clear status. A request these clients built that a
service rejects as invalid is the router's bug: INTERNAL naming the service, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence

import grpc
from forge.v1 import (
    common_pb2,
    embed_pb2,
    embed_pb2_grpc,
    guardrails_pb2,
    guardrails_pb2_grpc,
    llm_pb2,
    llm_pb2_grpc,
)
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import channels, telemetry
from services.common.codec import sampling_to_pb
from services.common.errors import (
    DeadlineExceeded,
    ForgeError,
    Internal,
    ResourceExhausted,
    Unavailable,
)
from services.common.status import retry_details
from services.router import metrics
from services.router.deadline import paced
from services.router.ports import (
    Generated,
    GenerateRequest,
    Grounding,
    Message,
    ModelInfo,
    RailFinding,
    RailVerdict,
    Stage,
)
from services.router.wire import DECISION_FROM_PB, FINISH_FROM_PB, PRIORITY_TO_PB, STAGE_TO_PB


def open_channel(address: str, service: str, dialer: channels.Dialer = channels.PLAINTEXT) -> aio.Channel:
    """A channel to `service` (mutual TLS when the dialer has credentials) with the tracing
    interceptors, so the trace continues into the service."""
    return dialer.channel(address, service, interceptors=telemetry.client_interceptors(address))


def domain_error(dependency: str, err: aio.AioRpcError, timeout_s: float | None = None) -> ForgeError:
    """What a failed downstream call means for the router's caller."""
    code = err.code()
    details = err.details() or code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout_s:.2f}s" if timeout_s is not None else ""
        return DeadlineExceeded(f"{dependency} did not answer{within} (the caller's deadline, split)")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after, reason = retry_details(err)
        return ResourceExhausted(
            reason or f"{dependency.upper()}_BUSY", f"{dependency}: {details}", retry_after or 1.0
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        # The caller's input was checked before the router built this request.
        metrics.DEPENDENCY_REJECTIONS.labels(dependency).inc()
        return Internal(f"{dependency} rejected a request the router built: {details}")
    return Unavailable(dependency, f"{code.name}: {details}")


# A broken health stream is opened again after this (the new one waits for the connection).
HEALTH_RETRY_S = 1.0


async def watch_health(channel: aio.Channel, report: Callable[[bool, str], None]) -> None:
    """Follow a service's grpc.health.v1 Watch ("": the whole process) until cancelled, reporting
    each status it answers. A broken stream (the service killed, restarting, shut down) reports
    not serving; the next one waits for the connection. A frozen service is noticed by the
    channel's keepalive (channels.KEEPALIVE_*), which breaks the stream."""
    stub = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    while True:
        try:
            call = stub.Watch(health_pb2.HealthCheckRequest(service=""), wait_for_ready=True)
            async for reply in call:
                report(
                    reply.status == serving, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                )
            report(False, "its health stream ended (shutting down)")
        except aio.AioRpcError as err:
            report(False, f"{err.code().name}: {err.details() or 'no details'}")
        await asyncio.sleep(HEALTH_RETRY_S)


class GrpcEmbeddings:
    dependency = "embed"

    def __init__(self, channel: aio.Channel) -> None:
        self._stub = embed_pb2_grpc.EmbedServiceStub(channel)

    async def embed(self, texts: Sequence[str], query: bool, timeout_s: float) -> list[list[float]]:
        kind = embed_pb2.EMBED_KIND_QUERY if query else embed_pb2.EMBED_KIND_DOCUMENT
        try:
            reply = await self._stub.Embed(embed_pb2.EmbedRequest(texts=texts, kind=kind), timeout=timeout_s)
        except aio.AioRpcError as err:
            raise domain_error(self.dependency, err, timeout_s) from err
        return [list(e.values) for e in reply.embeddings]

    async def dimension(self, timeout_s: float) -> int:
        reply = await self._stub.Embed(
            embed_pb2.EmbedRequest(texts=["dimension probe"], kind=embed_pb2.EMBED_KIND_QUERY),
            timeout=timeout_s,
        )
        return int(reply.dimension)


class GrpcGuardrails:
    dependency = "guardrails"

    def __init__(self, channel: aio.Channel) -> None:
        self._stub = guardrails_pb2_grpc.GuardrailsServiceStub(channel)

    async def check(
        self, text: str, stage: Stage, timeout_s: float, grounding: Sequence[Grounding] = ()
    ) -> RailVerdict:
        request = guardrails_pb2.CheckRequest(
            text=text,
            stage=STAGE_TO_PB[stage],
            grounding=[guardrails_pb2.GroundingText(source=g.source, text=g.text) for g in grounding],
        )
        try:
            reply = await self._stub.Check(request, timeout=timeout_s)
        except aio.AioRpcError as err:
            raise domain_error(self.dependency, err, timeout_s) from err
        decision = DECISION_FROM_PB.get(reply.decision)
        if decision is None:  # never read as allow: the text would pass unchecked
            raise Unavailable(self.dependency, f"answered an unknown decision ({reply.decision})")
        return RailVerdict(
            decision=decision,
            findings=tuple(
                RailFinding(f.rail, f.category, f.score, f.start, f.end, f.redacted) for f in reply.findings
            ),
            redacted_text=reply.redacted_text,
            unchecked_rails=tuple(reply.unchecked_rails),
        )


def _messages(messages: Sequence[Message]) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=m.role, content=m.content) for m in messages]


class GrpcLlm:
    dependency = "llm"

    def __init__(self, channel: aio.Channel, idle_timeout_s: float = 30.0) -> None:
        self._stub = llm_pb2_grpc.LlmServiceStub(channel)
        self._info: ModelInfo | None = None
        self._idle_timeout_s = idle_timeout_s

    def _idle(self) -> Unavailable:
        metrics.STREAMS_ENDED.labels("generation_idle").inc()
        return Unavailable(
            self.dependency, f"no token for {self._idle_timeout_s:g}s; the generation was aborted"
        )

    async def model_info(self, timeout_s: float) -> ModelInfo:
        if self._info is None:  # a property of the loaded model: ask once
            try:
                info = await self._stub.GetModelInfo(llm_pb2.GetModelInfoRequest(), timeout=timeout_s)
            except aio.AioRpcError as err:
                raise domain_error(self.dependency, err, timeout_s) from err
            self._info = ModelInfo(info.model, int(info.max_context_tokens))
        return self._info

    async def _tokenize(self, request: llm_pb2.TokenizeRequest, timeout_s: float) -> int:
        try:
            reply = await self._stub.Tokenize(request, timeout=timeout_s)
        except aio.AioRpcError as err:
            raise domain_error(self.dependency, err, timeout_s) from err
        return int(reply.token_count)

    async def count_tokens(self, messages: Sequence[Message], timeout_s: float) -> int:
        return await self._tokenize(llm_pb2.TokenizeRequest(messages=_messages(messages)), timeout_s)

    async def count_text_tokens(self, text: str, timeout_s: float) -> int:
        return await self._tokenize(llm_pb2.TokenizeRequest(prompt=text), timeout_s)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Generated, None]:
        call = self._stub.Generate(
            llm_pb2.GenerateRequest(
                messages=_messages(request.messages),
                params=sampling_to_pb(request.sampling),
                request_id=request.request_id,
                priority=PRIORITY_TO_PB[request.priority],
            ),
            timeout=request.timeout_s,
        )
        # Each token must come within the idle bound: a frozen LLM ends the answer in that time,
        # not at the total (600 s without a caller deadline); cancel() aborts it in the LLM.
        replies = paced(call, self._idle_timeout_s, self._idle)
        try:
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield Generated(
                        text=reply.text,
                        finish_reason=FINISH_FROM_PB.get(reply.finish_reason),
                        prompt_tokens=reply.usage.prompt_tokens,
                        completion_tokens=reply.usage.completion_tokens,
                    )
        except aio.AioRpcError as err:
            raise domain_error(self.dependency, err, request.timeout_s) from err
        finally:
            # Closing early (a blocked answer, a cancelled caller) must abort the generation.
            call.cancel()
