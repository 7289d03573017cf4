"""The LLM service contract over real gRPC, on each real engine: vLLM (SmolLM2-135M-Instruct
converted to safetensors) and llama.cpp (the same model's packaged GGUF)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import grpc
import pytest
from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from services.common.server import ForgeServer
from services.llm import metrics
from services.llm.app import LlmApp
from services.llm.core import LlmCore
from tests.helpers import app_of, grpcurl, wait_until

# Phrased so that greedy decoding says "Paris" on both engines (first-token near-ties differ).
FRANCE = [common_pb2.ChatMessage(role="user", content="What is the capital of France? Answer in one word.")]
# A raw prompt the model keeps continuing, so a stream is surely still running when we cut it.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


def stub(channel: aio.Channel) -> llm_pb2_grpc.LlmServiceAsyncStub:
    return llm_pb2_grpc.LlmServiceStub(channel)


def greedy(max_tokens: int, stop: Sequence[str] = ()) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=stop)


async def collect(
    call: aio.UnaryStreamCall[llm_pb2.GenerateRequest, llm_pb2.GenerateResponse],
) -> tuple[str, llm_pb2.GenerateResponse]:
    text, last = "", llm_pb2.GenerateResponse()
    async for reply in call:
        text += reply.text
        last = reply
    return text, last


def core_of(server: ForgeServer) -> LlmCore:
    return app_of(server, LlmApp).core


def engine_idle(server: ForgeServer) -> bool:
    core = core_of(server)
    assert core.engine is not None, "served before its engine was loaded"
    stats = core.engine.stats()
    return bool(core.active == 0 and stats.running == 0 and stats.waiting == 0)


async def test_chat_answer_streams_with_usage(any_llm_channel: aio.Channel) -> None:
    call = stub(any_llm_channel).Generate(llm_pb2.GenerateRequest(messages=FRANCE, params=greedy(32)))
    chunks = [reply async for reply in call]
    text = "".join(c.text for c in chunks)
    assert "Paris" in text
    assert len(chunks) > 2, "tokens should stream as several messages"
    last = chunks[-1]
    assert last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert last.usage.prompt_tokens > 10 and 0 < last.usage.completion_tokens <= 32
    assert all(c.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])


async def test_max_tokens_ends_with_length(any_llm_channel: aio.Channel) -> None:
    _, last = await collect(
        stub(any_llm_channel).Generate(llm_pb2.GenerateRequest(prompt=COUNTING, params=greedy(5)))
    )
    assert last.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 5


async def test_concurrent_streams_complete_and_greedy_is_deterministic(any_llm_channel: aio.Channel) -> None:
    seeded = common_pb2.SamplingParams(max_tokens=16, temperature=0.8, seed=1234)
    requests = [llm_pb2.GenerateRequest(messages=FRANCE, params=greedy(16)) for _ in range(2)]
    requests += [llm_pb2.GenerateRequest(prompt="The sky is", params=seeded) for _ in range(2)]
    results = await asyncio.gather(*(collect(stub(any_llm_channel).Generate(r)) for r in requests))
    texts = [text for text, _ in results]
    assert all(last.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED for _, last in results)
    assert texts[0] == texts[1] and "Paris" in texts[0]
    assert texts[2] == texts[3] and texts[2]


async def test_stop_strings_end_the_text(any_llm_channel: aio.Channel) -> None:
    text, last = await collect(
        stub(any_llm_channel).Generate(
            llm_pb2.GenerateRequest(prompt=COUNTING, params=greedy(40, stop=[" 14,"]))
        )
    )
    assert last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert "14" not in text and "13" in text


async def test_cancel_mid_stream_aborts_the_engine_request(
    any_llm_server: ForgeServer, any_llm_channel: aio.Channel
) -> None:
    before = metrics.ABORTED.labels("cancelled")._value.get()
    call = stub(any_llm_channel).Generate(llm_pb2.GenerateRequest(prompt=COUNTING, params=greedy(1500)))
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            break
    call.cancel()
    await wait_until(lambda: engine_idle(any_llm_server), 30, "the engine to drop the cancelled request")
    assert metrics.ABORTED.labels("cancelled")._value.get() == before + 1


async def test_deadline_mid_stream_is_deadline_exceeded_and_aborts(
    any_llm_server: ForgeServer, any_llm_channel: aio.Channel
) -> None:
    before = metrics.ABORTED.labels("deadline")._value.get()
    call = stub(any_llm_channel).Generate(
        llm_pb2.GenerateRequest(prompt=COUNTING, params=greedy(1500)), timeout=5
    )
    received = 0
    with pytest.raises(aio.AioRpcError) as failure:
        async for _ in call:
            received += 1
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert received > 0, "some tokens should have streamed before the deadline"
    await wait_until(lambda: engine_idle(any_llm_server), 30, "the engine to drop the expired request")
    assert metrics.ABORTED.labels("deadline")._value.get() == before + 1


async def test_over_capacity_is_resource_exhausted_with_retry_info(
    any_llm_server: ForgeServer, any_llm_channel: aio.Channel
) -> None:
    core = core_of(any_llm_server)
    capacity = core.capacity
    calls = [
        stub(any_llm_channel).Generate(llm_pb2.GenerateRequest(prompt=COUNTING, params=greedy(1500)))
        for _ in range(capacity)
    ]
    await wait_until(lambda: core.active == capacity, 60, "every slot to be taken")
    with pytest.raises(aio.AioRpcError) as refused:
        await collect(stub(any_llm_channel).Generate(llm_pb2.GenerateRequest(prompt="hi", params=greedy(4))))
    err = refused.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(err)
    assert status is not None
    retry, info = error_details_pb2.RetryInfo(), error_details_pb2.ErrorInfo()
    status.details[0].Unpack(retry)
    status.details[1].Unpack(info)
    assert retry.retry_delay.ToMilliseconds() > 0 and info.reason == "LLM_CAPACITY"
    for call in calls:
        call.cancel()
    await wait_until(lambda: engine_idle(any_llm_server), 30, "all slots to be released")
    _, last = await collect(
        stub(any_llm_channel).Generate(llm_pb2.GenerateRequest(prompt="hi", params=greedy(2)))
    )
    assert last.usage.completion_tokens > 0


LONG = "word " * 3000


@pytest.mark.parametrize(
    ("bad_request", "field", "message"),
    [
        (llm_pb2.GenerateRequest(), "messages", "set messages (chat) or prompt (raw text); both are empty"),
        (
            llm_pb2.GenerateRequest(messages=FRANCE, prompt="x"),
            "prompt",
            "set either messages or prompt, not both",
        ),
        (
            llm_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(role="wizard", content="hi")]),
            "messages[0].role",
            "must be one of system, user, assistant; got 'wizard'",
        ),
        (
            llm_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(role="user", content=" ")]),
            "messages[0].content",
            "must not be empty",
        ),
        (llm_pb2.GenerateRequest(prompt=LONG), "prompt", "the model's context is 2048 tokens"),
        (
            llm_pb2.GenerateRequest(prompt="x" * 70_000),
            "prompt",
            "at most 65536 characters in all, got 70000",
        ),
        (
            llm_pb2.GenerateRequest(prompt="hi", params=common_pb2.SamplingParams(max_tokens=0)),
            "params.max_tokens",
            "must be at least 1",
        ),
        (
            llm_pb2.GenerateRequest(prompt="hi", params=common_pb2.SamplingParams(max_tokens=5000)),
            "params.max_tokens",
            "exceeds the context of 2048 tokens",
        ),
        (
            llm_pb2.GenerateRequest(prompt="hi", params=common_pb2.SamplingParams(temperature=2.5)),
            "params.temperature",
            "must be in [0, 2], got 2.5",
        ),
        (
            llm_pb2.GenerateRequest(prompt="hi", params=common_pb2.SamplingParams(top_p=0.0)),
            "params.top_p",
            "must be in (0, 1]",
        ),
        (
            llm_pb2.GenerateRequest(prompt="hi", params=common_pb2.SamplingParams(top_k=-5)),
            "params.top_k",
            "must be >= 1",
        ),
        (
            llm_pb2.GenerateRequest(prompt="hi", params=common_pb2.SamplingParams(stop=["a"] * 9)),
            "params.stop",
            "at most 8 stop",
        ),
        (llm_pb2.GenerateRequest(prompt="hi", request_id="r" * 200), "request_id", "at most 128 characters"),
        (
            llm_pb2.GenerateRequest(prompt="hi", priority=common_pb2.Priority.ValueType(7)),
            "priority",
            "must be PRIORITY_INTERACTIVE or PRIORITY_BATCH",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument(
    any_llm_channel: aio.Channel, bad_request: llm_pb2.GenerateRequest, field: str, message: str
) -> None:
    with pytest.raises(aio.AioRpcError) as failure:
        await collect(stub(any_llm_channel).Generate(bad_request))
    err = failure.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.details() or "").startswith(f"{field}: ") and message in (err.details() or "")


async def test_tokenize_and_model_info(any_llm_channel: aio.Channel) -> None:
    chat = await stub(any_llm_channel).Tokenize(
        llm_pb2.TokenizeRequest(messages=FRANCE, return_token_ids=True)
    )
    raw = await stub(any_llm_channel).Tokenize(
        llm_pb2.TokenizeRequest(prompt="What is the capital of France?")
    )
    assert chat.token_count == len(chat.token_ids) > raw.token_count > 0  # the template adds tokens
    assert not raw.token_ids and chat.max_context_tokens == 2048
    info = await stub(any_llm_channel).GetModelInfo(llm_pb2.GetModelInfoRequest())
    assert info.engine in ("vllm", "llama_cpp") and info.model.lower().startswith("smollm2-135m-instruct")
    assert info.max_context_tokens == 2048 and info.max_concurrent_sequences == 4


async def test_first_token_latency_is_measured(any_llm_channel: aio.Channel) -> None:
    before = (
        metrics.TIME_TO_FIRST_TOKEN._sum.get(),
        sum(b.get() for b in metrics.TIME_TO_FIRST_TOKEN._buckets),
    )
    await collect(stub(any_llm_channel).Generate(llm_pb2.GenerateRequest(prompt="Hello", params=greedy(3))))
    after = sum(b.get() for b in metrics.TIME_TO_FIRST_TOKEN._buckets)
    assert after == before[1] + 1


async def test_grpcurl_streams_generate(any_llm_server: ForgeServer) -> None:
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": FRANCE[0].content}],
            "params": {"max_tokens": 24, "temperature": 0},
        }
    )
    out = await grpcurl("-plaintext", "-d", body, any_llm_server.address, "forge.v1.LlmService/Generate")
    assert out.returncode == 0, out.stderr
    replies = [json.loads(chunk) for chunk in out.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert "Paris" in "".join(r.get("text", "") for r in replies)
    assert (
        replies[-1]["finish_reason"] == "FINISH_REASON_STOP" and replies[-1]["usage"]["completion_tokens"] > 0
    )
