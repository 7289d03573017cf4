"""The answer eval's scoring rules (bench/answer_eval.py): fact match, abstention detection,
citation check, and the shipped question set's own consistency."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "bench"))

from answer_eval import (  # noqa: E402
    ABSTAIN,
    DATA_DIR,
    FACT,
    Question,
    abstains,
    counted_citations,
    fact_matches,
    grade,
    load_questions,
)

from forge_client import Citation  # noqa: E402

FILTER = Question("q1", "What part number is the oil filter?", "chiller.md", (r"7741-?B",), FACT)
UNKNOWN = Question("q2", "What is the Wi-Fi password?", None, (), ABSTAIN)


@dataclass(frozen=True)
class CitedCitation:
    """A citation as the SDK reports it once `cited` is a field (getattr keeps both forms working)."""

    document_id: str
    chunk_index: int
    score: float
    cited: bool
    number: int


def test_fact_matches_any_alternative_case_insensitive_and_typographic_dashes() -> None:
    assert fact_matches("The filter is PN 7741-b.", [r"7741-?B"])
    assert fact_matches("Call ext. 4412", [r"nobody", r"ext\.? ?4412"])
    assert fact_matches("Part 7741\u2011B", [r"7741-B"])  # a non-breaking hyphen
    assert not fact_matches("The filter is PN 7741-G.", [r"7741-?B"])
    assert not fact_matches("", [r"7741-?B"])


@pytest.mark.parametrize(
    "answer",
    [
        "The documents do not contain that information.",
        "The context doesn't mention a Wi-Fi password.",
        "I don't know.",
        "There is no information about the canteen in the provided documents.",
        "The speed limit is not mentioned.",
        "I cannot find this in the context documents.",
        "I'm unable to determine the CEO from the documents.",
        "That is not specified in the runbook.",
        "The sources don't have any information about parking.",
        "I\u2019m sorry, I don\u2019t know.",  # typographic apostrophes
    ],
)
def test_abstention_phrases_are_recognised(answer: str) -> None:
    assert abstains(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "The oil filter is part number 7741-B.",
        "Charge for 8 hours; the battery doesn't need watering before charging.",
        "Hard hats are replaced every 5 years.",
        "They don\u2019t have a special Q and A; the canteen opens at 11:39.",  # "have" alone
        "",
    ],
)
def test_answers_are_not_abstentions(answer: str) -> None:
    assert not abstains(answer)


def test_fact_question_graded_on_its_fact() -> None:
    top = [Citation("chiller.md", 0, 0.9), Citation("parts.md", 2, 0.5)]
    right = grade(FILTER, "It is 7741-B.", top)
    assert right.right and not right.wrong_abstention
    wrong = grade(FILTER, "It is 3310-K.", top)
    assert not wrong.right and not wrong.wrong_abstention


def test_fact_question_answered_with_an_abstention_is_a_wrong_abstention() -> None:
    g = grade(FILTER, "The documents do not say.", [Citation("chiller.md", 0, 0.9)])
    assert not g.right and g.wrong_abstention
    # An answer that hedges but gives the fact is right, not an abstention.
    hedged = grade(FILTER, "I'm not sure, but it may be 7741-B.", [])
    assert hedged.right and not hedged.wrong_abstention


def test_abstain_question_right_only_when_the_answer_abstains() -> None:
    assert grade(UNKNOWN, "The documents do not contain the password.", []).right
    assert not grade(UNKNOWN, "The password is hunter2.", []).right


def test_citation_without_cited_flags_counts_the_top_citation_by_file_name() -> None:
    # ids may carry a path; compare on the file name.
    top_right = grade(FILTER, "7741-B", [Citation("docs/chiller.md", 1, 0.8), Citation("x.md", 0, 0.7)])
    assert (top_right.citations_to_source, top_right.citations_counted) == (1, 1)
    top_wrong = grade(FILTER, "7741-B", [Citation("x.md", 0, 0.8), Citation("chiller.md", 1, 0.7)])
    assert (top_wrong.citations_to_source, top_wrong.citations_counted) == (0, 1)
    none = grade(FILTER, "7741-B", [])
    assert (none.citations_to_source, none.citations_counted) == (0, 0)


def test_citation_with_cited_flags_counts_only_the_cited_ones() -> None:
    citations = [
        CitedCitation("x.md", 0, 0.9, cited=False, number=1),
        CitedCitation("chiller.md", 3, 0.8, cited=True, number=2),
        CitedCitation("parts.md", 1, 0.7, cited=True, number=3),
    ]
    assert counted_citations(citations) == ["chiller.md", "parts.md"]  # type: ignore[arg-type]
    g = grade(FILTER, "7741-B [2][3]", citations)  # type: ignore[arg-type]
    assert (g.citations_to_source, g.citations_counted) == (1, 2)
    # None marked as used: the top one, as before the field existed.
    unmarked = [CitedCitation("x.md", 0, 0.9, cited=False, number=1)]
    assert counted_citations(unmarked) == ["x.md"]  # type: ignore[arg-type]


def test_abstain_questions_have_no_citation_score() -> None:
    g = grade(UNKNOWN, "Not in the documents.", [Citation("x.md", 0, 0.9)])
    assert (g.citations_to_source, g.citations_counted) == (0, 0)


def test_shipped_questions_are_consistent_with_the_corpus() -> None:
    """Each fact is in its source and not in its question (a trivially right answer), and an
    abstain question's answer phrases do not count as facts: the rules above can separate them."""
    questions = load_questions()
    docs = sorted(DATA_DIR.glob("*.md"))
    assert len(docs) >= 8
    for doc in docs:
        assert 300 <= len(doc.read_text().split()) <= 1500, doc.name
    assert len(questions) >= 60
    assert sum(1 for q in questions if q.kind == ABSTAIN) >= 10
    assert len({q.id for q in questions}) == len(questions)
    for q in questions:
        if q.kind == FACT:
            assert q.source is not None
            text = (DATA_DIR / q.source).read_text()
            assert any(re.search(f, text, re.IGNORECASE) for f in q.facts), q.id
            assert not fact_matches(q.question, q.facts), q.id
            assert not fact_matches("The documents do not say.", q.facts), q.id
        else:
            assert q.source is None and not q.facts, q.id


def test_load_questions_rejects_a_fact_question_without_a_source(tmp_path: Path) -> None:
    bad = tmp_path / "questions.json"
    bad.write_text('[{"id": "x", "question": "?", "source": "missing.md", "facts": ["a"], "kind": "fact"}]')
    with pytest.raises(ValueError, match="existing source"):
        load_questions(bad, DATA_DIR)
