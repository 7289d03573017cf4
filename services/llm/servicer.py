"""gRPC adapter of the LLM service: messages in, domain calls, messages out."""

from __future__ import annotations

from collections.abc import AsyncIterator

from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc
from grpc import aio

from services.common.codec import sampling_from_pb
from services.common.errors import InvalidArgument
from services.llm.core import GenerateEvent, GenerateInput, LlmCore, Priority
from services.llm.engine import FinishReason

_PRIORITIES = {
    common_pb2.PRIORITY_UNSPECIFIED: Priority.INTERACTIVE,
    common_pb2.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    common_pb2.PRIORITY_BATCH: Priority.BATCH,
}
DEADLINE_TOLERANCE_S = 0.25
_FINISH = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
}


def generate_input(request: llm_pb2.GenerateRequest) -> GenerateInput:
    priority = _PRIORITIES.get(request.priority)
    if priority is None:
        raise InvalidArgument(
            "priority", f"must be PRIORITY_INTERACTIVE or PRIORITY_BATCH, got {request.priority}"
        )
    return GenerateInput(
        messages=[(m.role, m.content) for m in request.messages],
        prompt=request.prompt,
        sampling=sampling_from_pb(request.params),
        request_id=request.request_id,
        priority=priority,
    )


def _response(event: GenerateEvent) -> llm_pb2.GenerateResponse:
    response = llm_pb2.GenerateResponse(text=event.text)
    if event.finish_reason is not None:
        response.finish_reason = _FINISH[event.finish_reason]
    if event.usage is not None:
        response.usage.prompt_tokens = event.usage.prompt_tokens
        response.usage.completion_tokens = event.usage.completion_tokens
    return response


class LlmServicer(llm_pb2_grpc.LlmServiceServicer):
    def __init__(self, core: LlmCore) -> None:
        self._core = core

    async def Generate(
        self, request: llm_pb2.GenerateRequest, context: aio.ServicerContext[object, object]
    ) -> AsyncIterator[llm_pb2.GenerateResponse]:
        def abort_reason() -> str:
            # The client's own timer usually cancels the call a moment before the server's fires,
            # so a call cut within the tolerance of its deadline counts as a deadline.
            remaining = context.time_remaining()
            return "deadline" if remaining is not None and remaining <= DEADLINE_TOLERANCE_S else "cancelled"

        async for event in self._core.generate(generate_input(request), abort_reason):
            yield _response(event)

    async def Tokenize(
        self, request: llm_pb2.TokenizeRequest, context: aio.ServicerContext[object, object]
    ) -> llm_pb2.TokenizeResponse:
        ids = await self._core.tokenize([(m.role, m.content) for m in request.messages], request.prompt)
        return llm_pb2.TokenizeResponse(
            token_count=len(ids),
            token_ids=ids if request.return_token_ids else [],
            max_context_tokens=self._core.model_info().max_context_tokens,
        )

    async def GetModelInfo(
        self, request: llm_pb2.GetModelInfoRequest, context: aio.ServicerContext[object, object]
    ) -> llm_pb2.GetModelInfoResponse:
        info = self._core.model_info()
        return llm_pb2.GetModelInfoResponse(
            model=info.model,
            engine=info.engine,
            max_context_tokens=info.max_context_tokens,
            max_concurrent_sequences=info.max_concurrent_sequences,
            running_requests=info.running,
            waiting_requests=info.waiting,
        )
