"""The grounded prompt: numbered sources, where they go for each model family, and which sources
an answer's [n] markers cite (or, without markers, which sources hold its figures)."""

from __future__ import annotations

from services.router.ports import ContextChunk, Message
from services.router.prompt import (
    GENERIC,
    NO_SOURCES,
    SOURCES_HEADER,
    assemble,
    cited_numbers,
    context_entry,
    source_holding_figures,
    style_for,
)

CHUNKS = [
    ContextChunk("pump.md", 2, 0.8, "Replace the seal kit PN 7741-B every 2000 hours."),
    ContextChunk("oncall.md", 0, 0.6, "Escalate to ext. 4412 after 15 minutes."),
]
QUESTION = Message("user", "Which seal kit does the pump take?")


def test_the_style_follows_the_served_model_family() -> None:
    assert not style_for("smollm2-135m-instruct").sources_in_user_turn
    assert style_for("gemma-3-270m-q4_k_m.gguf").family == "gemma"
    assert style_for("gemma-3-270m-q4_k_m.gguf").sources_in_user_turn
    assert style_for("smollm2-135m-instruct", "user").sources_in_user_turn, "the operator's choice wins"
    assert style_for("Qwen2.5-7B-Instruct").family == "qwen"
    assert style_for("something-else") is GENERIC and not GENERIC.sources_in_user_turn


def test_sources_are_numbered_with_their_document_in_the_system_message() -> None:
    messages = assemble("Answer from the sources.", [QUESTION], CHUNKS)
    system = messages[0]
    assert system.role == "system" and system.content.startswith("Answer from the sources.")
    assert "[1] (from pump.md, part 3)\nReplace the seal kit" in system.content
    assert "[2] (from oncall.md, part 1)" in system.content
    assert messages[1:] == [QUESTION]


def test_a_template_without_a_system_role_gets_the_sources_next_to_the_question() -> None:
    earlier = [Message("user", "Hi"), Message("assistant", "Hello.")]
    messages = assemble("Answer.", [*earlier, QUESTION], CHUNKS, style_for("gemma-3-1b-it"))
    assert messages[0] == Message("system", "Answer.")
    assert messages[1:3] == earlier, "earlier turns are kept as they were"
    last = messages[-1]
    assert last.role == "user" and last.content.startswith(SOURCES_HEADER)
    assert last.content.endswith("Question: Which seal kit does the pump take?")
    assert context_entry(1, CHUNKS[0]) in last.content


def test_no_matching_source_says_so_and_no_retrieval_asked_leaves_the_conversation_alone() -> None:
    none_found = assemble("Answer.", [QUESTION], [])
    assert NO_SOURCES in none_found[0].content
    plain = assemble("You are a helpful assistant.", [QUESTION], [], grounded=False)
    assert plain == [Message("system", "You are a helpful assistant."), QUESTION]
    assert len(NO_SOURCES) > len(SOURCES_HEADER), "a prompt counted without sources never undercounts"


def test_markers_name_the_sources_the_answer_used() -> None:
    assert cited_numbers("The kit is PN 7741-B [1].", 2) == {1}
    assert cited_numbers("Seal kit [1][2]; escalate [2, 1].", 2) == {1, 2}
    assert cited_numbers("See [1-3].", 4) == {1, 2, 3}
    assert cited_numbers("See [1\u20132].", 4) == {1, 2}, "an en dash range too"


def test_what_is_not_a_marker_for_a_given_source_is_ignored() -> None:
    assert cited_numbers("No sources cited here.", 3) == set()
    assert cited_numbers("Source [7] does not exist, [0] neither.", 3) == set()
    assert cited_numbers("Built in [2024] with [PN 12].", 3) == set(), "four digits or words are not markers"
    assert cited_numbers("[2-9]", 3) == {2, 3}


def test_an_answer_without_markers_is_attributed_by_its_figures() -> None:
    texts = [c.text for c in CHUNKS]
    assert source_holding_figures("The seal kit is PN 7741-B.", "Which seal kit?", texts) == 1
    assert source_holding_figures("Call ext. 4412 after 15 minutes.", "Who do I call?", texts) == 2
    # The source holding more of the figures wins, however it ranked; a tie goes to the better ranked.
    assert source_holding_figures("PN 7741-B, then ext. 4412 within 2000 hours.", "?", texts) == 1
    assert source_holding_figures("Ext. 4412 after 15 minutes, PN 7741-B.", "?", texts) == 2
    assert source_holding_figures("7741-B or 4412.", "?", texts) == 1


def test_figures_the_question_named_or_only_part_of_a_number_do_not_attribute() -> None:
    texts = [c.text for c in CHUNKS]
    assert source_holding_figures("The documents do not say.", "Which kit?", texts) is None
    assert source_holding_figures("It is PN 7741-B.", "Is the kit PN 7741-B?", texts) is None
    assert source_holding_figures("Port 441 or 774.", "?", texts) is None, "no match inside 4412 / 7741-B"
    assert source_holding_figures("Every 2000 hours.", "?", []) is None
