"""What `forge ask` prints after an answer: its sources (the cited ones marked), the model, tokens
and trace; `--json` prints all of it as one JSON object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_client import ChatSummary, Citation, FinishReason, Usage, Verdict
from services.cli import answer_view, client

SUMMARY = ChatSummary(
    (Citation("pump.md", 2, 0.91, number=1, cited=True), Citation("fern.md", 0, 0.42, number=2)),
    Usage(812, 40),
    "t" * 32,
    FinishReason.STOP,
    model="smollm2-135m-instruct",
)


def test_the_sources_are_listed_by_number_with_the_cited_ones_marked() -> None:
    lines = answer_view.summary_lines(SUMMARY)
    assert lines == [
        "Sources (the answer cites [1]):",
        "[1] pump.md (part 3, score 0.91)  <- cited",
        "[2] fern.md (part 1, score 0.42)",
        f"(model smollm2-135m-instruct; 812 prompt + 40 answer tokens; trace {'t' * 32})",
    ]


def test_an_answer_without_markers_shows_where_its_figures_are() -> None:
    matched = ChatSummary(
        (Citation("a.md", 0, 0.5, number=1), Citation("b.md", 4, 0.4, number=2, matched=True)),
        Usage(5, 7),
        "",
    )
    lines = answer_view.summary_lines(matched)
    assert lines[:3] == [
        "Sources (the answer cites none; its figures are in [2]):",
        "[1] a.md (part 1, score 0.50)",
        "[2] b.md (part 5, score 0.40)  <- holds the answer's figures",
    ]
    assert [c.document_id for c in matched.used] == ["b.md"]


def test_an_answer_citing_nothing_blocked_or_degraded_says_so() -> None:
    uncited = ChatSummary((Citation("a.md", 0, 0.5, number=1),), Usage(5, 7), "")
    assert answer_view.summary_lines(uncited)[0] == "Sources (the answer cites none):"
    blocked = ChatSummary(
        finish_reason=FinishReason.BLOCKED,
        verdict=Verdict("block", "input", "not allowed"),
        degraded=True,
        degraded_reasons=("embed",),
    )
    lines = answer_view.summary_lines(blocked)
    assert lines[0] == "[blocked] not allowed" and lines[1].startswith("[degraded] answered without: embed")
    assert lines[-1] == "(0 prompt + 0 answer tokens; trace -)", "no model line part when none answered"


def test_json_holds_the_answer_and_every_summary_field() -> None:
    document = json.loads(answer_view.summary_json("Which kit?", "PN 7741-B [1].", SUMMARY))
    assert document["question"] == "Which kit?" and document["answer"] == "PN 7741-B [1]."
    summary = document["summary"]
    assert summary["model"] == "smollm2-135m-instruct" and summary["finish_reason"] == "stop"
    assert summary["citations"][0] == {
        "document_id": "pump.md",
        "chunk_index": 2,
        "score": pytest.approx(0.91),
        "number": 1,
        "cited": True,
        "matched": False,
    }
    assert summary["usage"] == {"prompt_tokens": 812, "completion_tokens": 40}
    assert summary["trace_id"] == "t" * 32 and summary["verdict"] is None


def test_a_missing_path_is_a_client_error(tmp_path: Path) -> None:
    with pytest.raises(client.ClientError, match="no such file or folder"):
        client.documents_in([tmp_path / "absent"])
