"""The SDK holds the router to the chat stream's contract: the summary comes last."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from forge.v1 import common_pb2, router_pb2
from grpc import aio

from forge_client import Internal, Unavailable
from forge_client.aio import AsyncChatStream
from forge_client.client import ChatStream
from forge_client.retry import Retrier, RetryPolicy

SUMMARY = router_pb2.ChatResponse(summary=router_pb2.ChatSummary(finish_reason=common_pb2.FINISH_REASON_STOP))
OUT_OF_ORDER = [router_pb2.ChatResponse(delta="Hello"), SUMMARY, router_pb2.ChatResponse(delta=" again")]
REQUEST = router_pb2.ChatRequest(messages=[common_pb2.ChatMessage(role="user", content="hi")])


class SyncCall:
    """A grpc stream call's iterator face, over fixed replies."""

    def __init__(self, replies: list[router_pb2.ChatResponse]) -> None:
        self._replies: Iterator[router_pb2.ChatResponse] = iter(replies)
        self.cancelled = False

    def __iter__(self) -> SyncCall:
        return self

    def __next__(self) -> router_pb2.ChatResponse:
        return next(self._replies)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class AsyncCall:
    def __init__(self, replies: list[router_pb2.ChatResponse]) -> None:
        self._replies = list(replies)
        self.cancelled = False

    async def read(self) -> Any:
        return self._replies.pop(0) if self._replies else aio.EOF

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self, call: Any) -> None:
        self.call = call

    def Chat(self, request: Any, metadata: Any, timeout: Any) -> Any:
        return self.call


def stub_for(call: Any) -> Any:
    return FakeStub(call)


def test_the_sync_stream_refuses_text_after_the_summary_and_ends_the_call() -> None:
    call = SyncCall(OUT_OF_ORDER)
    stream = ChatStream(stub_for(call), REQUEST, (), None, Retrier(RetryPolicy(max_attempts=1)))
    with pytest.raises(Internal, match="after its summary"):
        list(stream)
    assert call.cancelled


async def test_the_async_stream_refuses_text_after_the_summary_and_ends_the_call() -> None:
    call = AsyncCall(OUT_OF_ORDER)
    stream = AsyncChatStream(stub_for(call), REQUEST, (), None, Retrier(RetryPolicy(max_attempts=1)))
    with pytest.raises(Internal, match="after its summary"):
        await stream.text()
    assert call.cancelled


async def test_a_well_ordered_stream_reads_whole() -> None:
    stream = AsyncChatStream(
        stub_for(AsyncCall(OUT_OF_ORDER[:2])),
        REQUEST,
        (),
        None,
        Retrier(RetryPolicy(max_attempts=1)),
    )
    assert await stream.text() == "Hello" and stream.summary.finish_reason.name == "STOP"


async def test_a_failed_call_is_a_typed_error_whose_cause_is_the_grpc_error() -> None:
    failure = aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "llm unavailable")

    class FailingCall(AsyncCall):
        async def read(self) -> Any:
            raise failure

    stream = AsyncChatStream(
        stub_for(FailingCall([])), REQUEST, (), None, Retrier(RetryPolicy(max_attempts=1))
    )
    with pytest.raises(Unavailable) as raised:
        await stream.text()
    assert raised.value.__cause__ is failure and raised.value.message == "llm unavailable"
