from __future__ import annotations

import random
import re

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


# Whitespace: the output rail rejects empty or whitespace-only text (issue 11: every blank line
# in a longer answer ended the chat with INVALID_ARGUMENT), so whitespace goes with real text.


def test_a_blank_line_goes_with_the_segment_before_it() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("Forge is a mesh.") == []
    assert segmenter.feed("\n") == []  # a blank line may follow
    assert segmenter.feed("\n") == []
    assert segmenter.feed("It has") == ["Forge is a mesh.\n\n"]
    assert segmenter.flush() == "It has"


def test_leading_whitespace_waits_for_the_first_text() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("\n\n") == []
    assert segmenter.feed("  ") == []
    assert segmenter.feed("Forge is a mesh.\n\nIt") == ["\n\n  Forge is a mesh.\n\n"]
    assert segmenter.flush() == "It"


def test_a_whitespace_only_answer_comes_out_only_at_flush() -> None:
    segmenter = Segmenter(max_chars=16)
    assert segmenter.feed("\n\n   \r\n" + " " * 40) == []
    assert segmenter.flush() == "\n\n   \r\n" + " " * 40


def test_trailing_whitespace_at_the_end_comes_with_the_last_text() -> None:
    segmenter = Segmenter()
    assert segmenter.feed("Done.\n\n  ") == []
    assert segmenter.flush() == "Done.\n\n  "


def test_crlf_and_indentation_go_with_the_line_before() -> None:
    segments = feed_all(Segmenter(), ["One.\r\n\r\n", "Two:\r\n", "    indented\r\n", "end"])
    assert segments == ["One.\r\n\r\n", "Two:\r\n    ", "indented\r\n", "end"]


def test_a_list_number_is_not_a_sentence_end() -> None:
    segments = feed_all(Segmenter(), list("Steps:\n\n1. Install it.\n2. Run it.\n10. Done\n"))
    assert segments == ["Steps:\n\n", "1. Install it.\n", "2. Run it.\n", "10. Done\n"]


def test_fenced_code_with_blank_lines_inside() -> None:
    answer = "Config:\n\n```yaml\nrouter:\n  port: 7411\n\n  top_k: 4\n```\n\nThat is all."
    segments = feed_all(Segmenter(), list(answer))
    assert segments == [
        "Config:\n\n",
        "```yaml\n",
        "router:\n  ",
        "port: 7411\n\n  ",
        "top_k: 4\n",
        "```\n\n",
        "That is all.",
    ]


def test_a_word_cut_never_starts_in_leading_whitespace() -> None:
    segments = feed_all(Segmenter(max_chars=16), ["\n" + " " * 30 + "alpha beta gamma delta epsilon"])
    assert segments[0].strip() == "alpha beta"
    assert "".join(segments) == "\n" + " " * 30 + "alpha beta gamma delta epsilon"


# Answers shaped like the ones the shipped model (SmolLM2-135M) writes to everyday questions with
# the router's default 256 tokens (the last two are verbatim), plus shapes it writes less often
# (CRLF, tabs, an answer opening with blank lines, a phone number the rail must see whole).
REAL_ANSWERS = [
    "Forge is an async gRPC inference mesh for one-GPU edge appliances. It runs separate services "
    "for LLM inference, embeddings and guardrails, and a router in front of them.\n\n"
    "The router does admission control and retrieval-augmented generation against Milvus.\n\n"
    "To start it, run `make up`.",
    "To run the tests, follow these steps:\n\n"
    "1. Install the dependencies with `make test`.\n"
    "2. Wait for the installation to finish.\n"
    "3. Run the tests with `.venv/bin/python -m pytest`.\n\n"
    "That's it! The tests will run and report any failures.\n",
    "Here are the ports every service listens on:\n\n"
    "- **router**: 50051\n"
    "- **llm**: 50052\n"
    "- **embed**: 50053\n"
    "- **guardrails**: 50054\n\n"
    "Each service also has a metrics port.  \n"
    "You can check them with `curl`.",
    "Sure! Here is the configuration as a code block:\n\n"
    "```yaml\n"
    "admission:\n"
    "  max_sessions: 4\n"
    "\n"
    "  queue:\n"
    "    enabled: true\n"
    "```\n\n"
    "And in Python:\n\n"
    "```python\n"
    "def main():\n"
    "    settings = load()\n"
    "\n"
    "\n"
    "    return settings\n"
    "```\n",
    "\n\nI'm sorry, but the documents do not say. Please contact support at 555-0100 for help.",
    "Step 1. Open the file.\r\nStep 2. Edit it.\r\n\r\nDone.\r\n",
    "Name\tPort\n\tllm\t50052\n\tembed\t50053\n\n",
    "The answer is:\n\n\n\n   \n\n" + "a very long line without any break " * 30,
    # Sampled from the golden-path test (default temperature), as released (redacted) by the rail.
    "Here's a sample of the table:\n"
    "\n"
    "| Sequence             | Protocol          |\n"
    "\n"
    "\n"
    "Here's the table again:\n"
    "\n"
    "|  Sequence                | Protocol                         |\n"
    "|---------------------|--------------------------|\n"
    "| 7411                  | UDP                        |\n"
    "| 7412                  | TCP                        |\n"
    "| TCP                   | TCP                        |\n"
    "| HTTP                | HTTP                 |\n"
    "| LINUX         | SELINUX               |\n"
    "| SERVER         | REDIS               |\n"
    "\n"
    "\n"
    "\n"
    "After creating the table:\n"
    "\n"
    "```bash\n"
    "<PERSON>```\n"
    "\n"
    "In this example, I tried to create a new list with the protocol and a list of filters "
    "applied to it. Look closely at that and you might see the process followed by a "
    "particular command, as shown in the example. That is due to the fact that there is a "
    "multi-process reference made [4.16 a.o.] Kubernetes-2.7.x that deletes the default "
    "pso_sso.hac to allow Kubernetes-2.7.x to understand HAC-2.1.6-arena. A very rare purpose.",
    "Add yourself to a patch for the package Greece for updates:\n"
    "<<URL>\n"
    "import env\n"
    "<URL>nux >= 1.5\n"
    "# noqa: xf\n"
    "ad-wiki: noqa:xf\n"
    "filter: Time of last update\n"
    "\n"
    "How to update Greece for:\n"
    "\n"
    "1.⚙\n"
    "2.⚘\n"
    "3.⚘⚙️\n"
    "€2.€%200.0.0\n"
    "frocerabs:\n"
    "javascript: false\n"
    "compatibility_release:\n"
    'Do not support compatibility releases (<URL>00437.B)", components.te\n'
    "\n"
    "1.\\<URL>idLst:\n"
    "1.25i\n"
    "2.102m\n"
    "2.102I\n"
    "\n"
    "Update 2.2 to port to version 3.4. The after along with having special surgery.\n"
    "Of course \u2013:\n"
    "Update 2 to version 3 this Apollo Community service\u2019s AI.\n"
    "The fix",
]


def pieces_of(text: str, sizes: tuple[int, ...]) -> list[str]:
    """The text split into pieces of the given sizes in turn: a deterministic token stream."""
    pieces, at, n = [], 0, 0
    while at < len(text):
        size = sizes[n % len(sizes)]
        pieces.append(text[at : at + size])
        at, n = at + size, n + 1
    return pieces


def token_like(text: str) -> list[str]:
    """Pieces the way a BPE tokenizer streams them: a word with its leading space, newlines alone."""
    return re.findall(r"\n|[^\S\n]*\S+|[^\S\n]+", text)


STREAMS = {
    "whole": lambda t: [t],
    "chars": lambda t: list(t),
    "1-4": lambda t: pieces_of(t, (1, 3, 2, 4)),
    "4-1": lambda t: pieces_of(t, (4, 2, 1, 3)),
    "tokens": token_like,
}


@pytest.mark.parametrize("max_chars", [16, 320])
@pytest.mark.parametrize("stream", list(STREAMS))
@pytest.mark.parametrize("answer", REAL_ANSWERS, ids=range(len(REAL_ANSWERS)))
def test_real_answers_never_give_the_rail_whitespace(answer: str, stream: str, max_chars: int) -> None:
    pieces = STREAMS[stream](answer)
    assert "".join(pieces) == answer
    segmenter = Segmenter(max_chars=max_chars)
    fed: list[str] = []
    for piece in pieces:
        fed.extend(segmenter.feed(piece))
    last = segmenter.flush()

    assert "".join([*fed, last]) == answer
    assert all(s.strip() for s in fed), fed  # what the rail checks is never blank
    assert last.strip() or not answer.strip()  # flush is blank only for a blank answer
    for segment in [*fed, last]:
        text = segment.strip()  # whitespace held around a segment's text comes on top of max_chars
        assert len(text) <= max_chars or not re.search(r"\s", text), segment
    if "555-0100" in answer:
        assert any("555-0100" in s for s in [*fed, last])  # a finding is seen whole


@pytest.mark.parametrize("answer", REAL_ANSWERS, ids=range(len(REAL_ANSWERS)))
def test_the_segments_do_not_depend_on_how_the_answer_streams(answer: str) -> None:
    """Cut points depend on the text, not on token boundaries (so a rail verdict is reproducible)."""
    results = {name: feed_all(Segmenter(), split(answer)) for name, split in STREAMS.items()}
    assert len({tuple(r) for r in results.values()}) == 1, results


def test_any_text_any_split_keeps_the_properties() -> None:
    """Seeded random texts over the characters that matter (whitespace, sentence ends, digits)."""
    rng = random.Random(11)
    alphabet = ["a", "bc ", "d" * 9, " ", "\n", "\r", "\r\n", "\t", ".", "1", "!", "x?"]
    for _ in range(300):
        answer = "".join(rng.choice(alphabet) for _ in range(80))
        max_chars = rng.choice([16, 24, 320])
        sizes = tuple(rng.randint(1, 6) for _ in range(5))
        segmenter = Segmenter(max_chars=max_chars)
        fed = [s for piece in pieces_of(answer, sizes) for s in segmenter.feed(piece)]
        last = segmenter.flush()
        assert "".join([*fed, last]) == answer
        assert all(s.strip() for s in fed), (answer, fed)
        assert last.strip() or not answer.strip()
        assert all(len(s.strip()) <= max_chars or not re.search(r"\s", s.strip()) for s in [*fed, last])
        assert [*fed, last] == feed_all(Segmenter(max_chars=max_chars), [answer])
