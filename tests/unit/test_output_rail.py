from __future__ import annotations

import pytest

from services.router.output_rail import Segmenter


def feed_all(segmenter: Segmenter, pieces: list[str]) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        out.extend(segmenter.feed(piece))
    out.append(segmenter.flush())
    return out


def test_segments_end_at_sentences_and_join_back_to_the_answer() -> None:
    pieces = ["The code", " is 4417", ". Only the", " night shift", "! Call 555", "-0100 now.", " Bye"]
    segments = feed_all(Segmenter(max_chars=320), pieces)
    assert segments == ["The code is 4417. ", "Only the night shift! ", "Call 555-0100 now. ", "Bye"]
    assert "".join(segments) == "".join(pieces)


def test_a_sentence_end_waits_for_what_follows_it() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("Pi is 3.") == []  # might be 3.14
    assert segmenter.feed("14 exactly. ") == []  # trailing space may continue
    assert segmenter.feed("Next") == ["Pi is 3.14 exactly. "]


def test_line_breaks_end_a_segment() -> None:
    assert Segmenter().feed("- one\n- two\n- th") == ["- one\n", "- two\n"]


@pytest.mark.parametrize("max_chars", [16, 40])
def test_text_without_breaks_is_cut_at_a_word_boundary(max_chars: int) -> None:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    segments = feed_all(Segmenter(max_chars=max_chars), list(words))
    assert "".join(segments) == words
    assert all(len(s) <= max_chars for s in segments)
    assert all(s.endswith(" ") for s in segments[:-1])


def test_flush_of_nothing_is_empty() -> None:
    assert Segmenter().flush() == ""
