"""The chaos suite's checks on their own (no mesh): they must see each way a document or a call
can be wrong after a fault, or a passing chaos round would prove nothing."""

from __future__ import annotations

from tests.chaos.corpus import VERSION_KEY, Doc, expected_chunks
from tests.chaos.ledger import Hit, Ledger
from tests.chaos.load import CallRecord, call_problems

TOP_K = 32
DOC = Doc("acme", "greenhouse")


def hits(version: int, indexes: list[int] | None = None, doc: Doc = DOC) -> list[Hit]:
    chunks = expected_chunks(doc.topic, version)
    return [
        Hit(doc.id, i, chunks[i], {VERSION_KEY: str(version)})
        for i in (range(len(chunks)) if indexes is None else indexes)
    ]


def acked(*versions: int) -> Ledger:
    ledger = Ledger([DOC])
    for _ in range(max(versions)):
        v = ledger.send(DOC.id)
        if v in versions:
            ledger.ack(DOC.id, v, len(expected_chunks(DOC.topic, v)))
    return ledger


def test_the_acknowledged_version_whole_passes() -> None:
    verdict = acked(3).check("acme", hits(3), TOP_K)
    assert (verdict.lost, verdict.mixed, verdict.problems) == (0, 0, [])


def test_a_version_in_doubt_whole_passes_and_an_older_one_is_lost() -> None:
    ledger = acked(2)
    ledger.send(DOC.id)  # v3 sent, its call failed: in doubt
    assert ledger.check("acme", hits(3), TOP_K).problems == []
    older = ledger.check("acme", hits(1), TOP_K)
    assert older.lost == 1 and "neither acknowledged nor in doubt" in older.problems[0]


def test_a_missing_document_is_lost_unless_never_acknowledged() -> None:
    assert acked(1).check("acme", [], TOP_K).lost == 1
    never = Ledger([DOC])
    never.send(DOC.id)
    assert never.check("acme", [], TOP_K).problems == []


def test_an_old_versions_tail_beside_a_new_head_is_a_mix() -> None:
    # v3 has three chunks, v4 one: v4's chunk 0 with v3's chunks 1 and 2 left behind.
    assert len(expected_chunks(DOC.topic, 3)) > len(expected_chunks(DOC.topic, 4))
    verdict = acked(3, 4).check("acme", hits(4) + hits(3, [1, 2]), TOP_K)
    assert verdict.mixed == 1 and verdict.lost == 1


def test_a_missing_chunk_or_wrong_text_is_caught() -> None:
    assert "chunk indexes" in acked(3).check("acme", hits(3, [0, 2]), TOP_K).problems[0]
    wrong = hits(3)
    wrong[1] = Hit(DOC.id, 1, "something else", {VERSION_KEY: "3"})
    assert "not that version's text" in acked(3).check("acme", wrong, TOP_K).problems[0]


def test_another_tenants_document_and_a_wrong_ack_count_are_reported() -> None:
    ledger = acked(1)
    verdict = ledger.check("acme", hits(1) + hits(1, doc=Doc("other", "greenhouse")), TOP_K)
    assert any("not one of the tenant's documents" in p for p in verdict.problems)
    v = ledger.send(DOC.id)
    ledger.ack(DOC.id, v, 99)
    assert ledger.bad_acks and "acknowledged with 99 chunks" in ledger.bad_acks[0]


def call(code: str, elapsed_s: float = 1.0) -> CallRecord:
    return CallRecord("chat", "acme", 0.0, elapsed_s, 20.0, code, "why")


def test_calls_that_end_badly_or_late_are_reported_and_the_allowed_ones_are_not() -> None:
    fine = [call(c) for c in ("OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")]
    assert call_problems(fine) == []
    problems = call_problems([*fine, call("UNKNOWN"), call("INTERNAL"), call("HANG"), call("OK", 30.0)])
    assert [p.split(":")[0] for p in problems] == [
        "chat ended HANG",
        "chat ended INTERNAL",
        "chat ended UNKNOWN",
        "chat ended after its deadline",
    ]
