"""The SSE body of a streamed chat: chunks in order, [DONE] last, and a router error after the
response started as an OpenAI error event (a stand-in call; the real one is in
tests/integration/test_gateway.py)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from forge.v1 import common_pb2, router_pb2
from grpc import aio

from services.gateway.http_api import _chat_events


class Call:
    """What the events read: the router's messages after the first, then EOF or an error."""

    def __init__(self, *rest: Any) -> None:
        self.rest = list(rest)

    async def read(self) -> Any:
        item = self.rest.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item


def events(body: list[bytes]) -> list[str]:
    text = b"".join(body).decode()
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block]


async def collect(call: Call, first: Any) -> list[str]:
    return events([part async for part in _chat_events(call, first, "chatcmpl-x", "m", 1)])  # type: ignore[arg-type]


async def test_chunks_then_the_summary_chunk_then_done() -> None:
    summary = router_pb2.ChatSummary(
        usage=common_pb2.Usage(prompt_tokens=3, completion_tokens=2),
        finish_reason=common_pb2.FINISH_REASON_STOP,
    )
    call = Call(router_pb2.ChatResponse(delta=" there"), router_pb2.ChatResponse(summary=summary), aio.EOF)
    out = await collect(call, router_pb2.ChatResponse(delta="Hi"))
    assert out[-1] == "[DONE]"
    chunks = [json.loads(e) for e in out[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {"content": " there"},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] == 5


async def test_an_error_mid_stream_is_an_openai_error_event() -> None:
    err = aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), details="llm unavailable: gone"
    )
    out = await collect(Call(err), router_pb2.ChatResponse(delta="Hi"))
    assert out[-1] == "[DONE]"
    error = json.loads(out[-2])
    assert error == {
        "error": {
            "message": "llm unavailable: gone",
            "type": "server_error",
            "param": None,
            "code": "unavailable",
        }
    }
