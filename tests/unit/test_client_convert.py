"""forge_client's protobuf mapping: every summary field a caller reads, a blocked answer's
verdict included (the integration tests cover an answer; a block needs the guardrails)."""

from __future__ import annotations

from forge.v1 import common_pb2, guardrails_pb2, router_pb2

from forge_client import _convert
from forge_client.types import Citation, Finding, FinishReason, Message, Priority, Usage, Verdict


def test_a_blocked_summary_maps_every_field() -> None:
    wire = router_pb2.ChatSummary(
        citations=[router_pb2.Citation(document_id="a.md", chunk_index=2, score=0.5)],
        usage=common_pb2.Usage(prompt_tokens=10, completion_tokens=0),
        trace_id="t" * 32,
        degraded=True,
        degraded_reasons=["rail:pii"],
        finish_reason=common_pb2.FINISH_REASON_BLOCKED,
        verdict=router_pb2.Verdict(
            decision=guardrails_pb2.DECISION_BLOCK,
            stage=guardrails_pb2.STAGE_INPUT,
            message="blocked: prompt injection",
            turn=1,
            findings=[
                guardrails_pb2.Finding(rail="injection", category="jailbreak", score=0.75, start=0, end=9)
            ],
        ),
    )
    summary = _convert.chat_summary(wire)
    assert summary.citations == (Citation("a.md", 2, 0.5),) and summary.usage == Usage(10, 0)
    assert summary.blocked and summary.finish_reason is FinishReason.BLOCKED
    assert summary.degraded and summary.degraded_reasons == ("rail:pii",)
    assert summary.verdict == Verdict(
        "block",
        "input",
        "blocked: prompt injection",
        (Finding("injection", "jailbreak", 0.75, 0, 9, False),),
        1,
    )
    plain = _convert.chat_summary(router_pb2.ChatSummary(finish_reason=common_pb2.FINISH_REASON_STOP))
    assert plain.verdict is None and plain.finish_reason is FinishReason.STOP and not plain.blocked


def test_a_request_carries_the_conversation_and_only_the_parameters_set() -> None:
    request = _convert.chat_request(
        [Message("system", "Be brief."), {"role": "user", "content": "Hi"}],
        collection="docs",
        top_k=3,
        max_tokens=16,
        temperature=None,
        top_p=None,
        seed=7,
        stop=["\n\n"],
        priority=Priority.BATCH,
        retrieval=False,
    )
    assert [(m.role, m.content) for m in request.messages] == [("system", "Be brief."), ("user", "Hi")]
    assert (
        request.params.max_tokens == 16 and request.params.seed == 7 and list(request.params.stop) == ["\n\n"]
    )
    assert not request.params.HasField("temperature") and not request.params.HasField("top_p")
    assert request.priority == common_pb2.PRIORITY_BATCH and request.disable_retrieval
    assert (request.collection, request.top_k) == ("docs", 3)
