"""OpenAI's request and response shapes to and from the router's messages."""

from __future__ import annotations

import base64
import struct

import pytest
from forge.v1 import common_pb2, embed_pb2, guardrails_pb2, router_pb2
from pydantic import ValidationError

from services.gateway import codec
from services.gateway.errors import HttpError


def request(**fields: object) -> codec.ChatCompletionRequest:
    return codec.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def test_chat_request_maps_messages_sampling_and_forge_fields() -> None:
    body = request(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a "}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None},
        ],
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop="END",
        seed=7,
        collection="manuals",
        top_k=3,
        priority="batch",
    )
    chat = codec.chat_request(body)
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "be brief"),
        ("user", "a b"),
        ("assistant", ""),
    ]
    assert chat.params.max_tokens == 64 and chat.params.HasField("temperature")
    assert chat.params.temperature == pytest.approx(0.2) and chat.params.top_p == pytest.approx(0.9)
    assert list(chat.params.stop) == ["END"] and chat.params.seed == 7
    assert (chat.collection, chat.top_k, chat.priority) == ("manuals", 3, common_pb2.PRIORITY_BATCH)
    assert not chat.disable_retrieval


def test_unset_sampling_fields_stay_unset_for_the_routers_defaults() -> None:
    chat = codec.chat_request(request())
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        assert not chat.params.HasField(name), name
    assert chat.priority == common_pb2.PRIORITY_INTERACTIVE and chat.top_k == 0


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert codec.chat_request(request(max_tokens=10, max_completion_tokens=20)).params.max_tokens == 20


def test_values_are_passed_on_for_the_router_to_judge() -> None:
    # Out-of-range values are the router's to refuse (it names the field): no check of its own here.
    chat = codec.chat_request(request(max_tokens=0, temperature=9.0))
    assert chat.params.max_tokens == 0 and chat.params.temperature == 9.0


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].type"),
    ],
)
def test_what_forge_does_not_have_is_a_400_naming_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(HttpError) as err:
        codec.chat_request(request(**fields))
    assert err.value.failure.status == 400
    assert err.value.failure.body["error"]["param"] == param


def test_integers_beyond_the_wire_type_are_refused_before_the_router() -> None:
    with pytest.raises(ValidationError):
        request(max_tokens=2**31)
    with pytest.raises(ValidationError):
        request(top_k=-1)


def summary(**fields: object) -> router_pb2.ChatSummary:
    return router_pb2.ChatSummary(
        citations=[router_pb2.Citation(document_id="a.md", chunk_index=2, score=0.5, number=1, cited=True)],
        model="smollm2-135m-instruct",
        usage=common_pb2.Usage(prompt_tokens=10, completion_tokens=5),
        trace_id="ab" * 16,
        finish_reason=common_pb2.FINISH_REASON_LENGTH,
        **fields,  # type: ignore[arg-type]
    )


def test_completion_has_openai_fields_and_forge_extras() -> None:
    answer = codec.completion(
        "m", "ab" * 16, 123, "Hello.", summary(degraded=True, degraded_reasons=["retrieval"])
    )
    assert answer["id"] == f"chatcmpl-{'ab' * 16}" and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hello."}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    forge = answer["forge"]
    assert forge["citations"] == [
        {"number": 1, "document_id": "a.md", "chunk_index": 2, "score": 0.5, "cited": True, "matched": False}
    ]
    assert forge["model"] == "smollm2-135m-instruct"
    assert forge["degraded"] is True and forge["degraded_reasons"] == ["retrieval"]
    assert forge["verdict"] is None and forge["trace_id"] == "ab" * 16


def test_a_blocked_chat_ends_with_content_filter_and_the_verdict() -> None:
    verdict = router_pb2.Verdict(
        decision=guardrails_pb2.DECISION_BLOCK, stage=guardrails_pb2.STAGE_INPUT, message="no", turn=0
    )
    blocked = summary(verdict=verdict)
    blocked.finish_reason = common_pb2.FINISH_REASON_BLOCKED
    last = codec.chunk("id", "m", 1, {}, blocked)
    assert last["choices"][0]["finish_reason"] == "content_filter"
    assert last["forge"]["verdict"]["message"] == "no" and last["forge"]["verdict"]["turn"] == 0


def test_only_the_last_chunk_carries_usage_and_forge() -> None:
    middle = codec.chunk("id", "m", 1, {"content": "x"})
    assert middle["choices"][0] == {
        "index": 0,
        "delta": {"content": "x"},
        "finish_reason": None,
        "logprobs": None,
    }
    assert "usage" not in middle and "forge" not in middle
    assert codec.chunk("id", "m", 1, {}, summary())["usage"]["total_tokens"] == 15


def test_embeddings_as_floats_or_base64_float32() -> None:
    response = embed_pb2.EmbedResponse(
        embeddings=[embed_pb2.Embedding(values=[0.5, -1.0])], dimension=2, model="mini"
    )
    body = codec.EmbeddingsRequest(model="x", input="hello")
    assert codec.embed_texts(body) == ["hello"]
    out = codec.embeddings(body, response)
    assert out["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}]
    assert out["model"] == "mini"
    b64 = codec.embeddings(
        codec.EmbeddingsRequest(model="x", input=["a"], encoding_format="base64"), response
    )
    assert struct.unpack("<2f", base64.b64decode(b64["data"][0]["embedding"])) == (0.5, -1.0)


def test_embeddings_refuse_token_arrays_and_other_dimensions() -> None:
    with pytest.raises(HttpError) as err:
        codec.embed_texts(codec.EmbeddingsRequest(model="x", input=[1, 2, 3]))
    assert err.value.failure.body["error"]["param"] == "input"
    response = embed_pb2.EmbedResponse(dimension=384, model="mini")
    with pytest.raises(HttpError) as err:
        codec.embeddings(codec.EmbeddingsRequest(model="x", input="a", dimensions=256), response)
    assert err.value.failure.body["error"]["param"] == "dimensions"
