"""The output window's release rule on its own: what may leave after each check."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.router.output_window import OutputWindow
from services.router.ports import Decision, RailFinding, RailVerdict


def verdict(*spans: tuple[int, int]) -> RailVerdict:
    findings = tuple(RailFinding("pii", "pii.phone_number", 1.0, s, e, redacted=True) for s, e in spans)
    return RailVerdict(Decision.REDACT if findings else Decision.ALLOW, findings, "")


def test_the_tail_is_held_back_until_the_end() -> None:
    window = OutputWindow(context=4, holdback=4)
    window.add("abcdefghij")
    assert window.due(final=False)
    assert window.window() == (0, "abcdefghij")
    assert window.release(0, None, final=False) == "abcdef"
    assert not window.due(final=False) and window.due(final=True)  # only the held-back tail is left
    window.add("k")
    offset, text = window.window()
    assert (offset, text) == (2, "cdefghijk")  # 4 released characters of context, then the rest
    assert window.release(offset, None, final=True) == "ghijk"
    assert not window.due(final=True)


def test_a_release_never_cuts_through_a_finding_and_then_masks_it_whole() -> None:
    window = OutputWindow(context=4, holdback=4)
    window.add("please call 5550134")  # the number at 12..19; the nominal cut (15) is inside it
    assert window.release(0, verdict((12, 19)), final=False) == "please call "
    offset, text = window.window()
    assert (offset, text) == (8, "all 5550134")
    assert window.release(offset, verdict((4, 11)), final=True) == "<PHONE_NUMBER>"


def test_a_finding_that_began_in_released_text_is_masked_from_there_and_the_release_ends() -> None:
    # Longer than the holdback, its start left before anyone saw it whole: the release must still
    # terminate (it once looped forever here) and mask the rest of it.
    window = OutputWindow(context=8, holdback=2)
    window.add("0123456789")
    assert window.release(0, None, final=False) == "01234567"
    window.add("abcdefghij")
    assert window.window() == (0, "0123456789abcdefghij")
    assert window.release(0, verdict((6, 14)), final=False) == "<PHONE_NUMBER>efgh"


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=12),
    spans=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 60)), max_size=4),
    context=st.integers(0, 16),
    holdback=st.integers(0, 16),
)
def test_any_answer_is_released_whole_once_and_every_release_ends(
    pieces: list[str], spans: list[tuple[int, int]], context: int, holdback: int
) -> None:
    """Whatever the findings (even ones starting in released text), each release ends; without
    findings the releases join back to the answer exactly, and nothing is left unreleased."""
    window = OutputWindow(context, holdback)
    plain = OutputWindow(context, holdback)
    released: list[str] = []
    released_plain: list[str] = []
    for i, piece in enumerate(pieces):
        final = i == len(pieces) - 1
        for w, out, with_findings in ((window, released, True), (plain, released_plain, False)):
            w.add(piece)
            if not w.due(final):
                continue
            offset, text = w.window()
            found = verdict(*((s, min(s + n, len(text))) for s, n in spans if s < len(text)))
            out.append(w.release(offset, found if with_findings else None, final))
    assert "".join(released_plain) == "".join(pieces)
    assert not window.due(final=True) and not plain.due(final=True)
