"""Chunking with the real packaged MiniLM tokenizer and the real splitter (no doubles)."""

from __future__ import annotations

import itertools
import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.router.chunking import Chunk, Chunker, ChunkingConfig, default_tokenizer_path

VOCABULARY = (
    "the appliance routes inference requests across a mesh of model servers while the router "
    "retrieves passages embeds queries and streams tokens back to clients with citations"
)
WORDS: list[str] = VOCABULARY.split()


def _sentence(rng: random.Random, words: tuple[int, int]) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))).capitalize() + "."


def _paragraph(rng: random.Random, sentences: int, words: tuple[int, int] = (6, 18)) -> str:
    return " ".join(_sentence(rng, words) for _ in range(sentences))


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker()


@pytest.fixture(scope="module")
def long_text() -> str:
    rng = random.Random(7)
    paras: list[str] = []
    while sum(len(p) for p in paras) < 20_000:
        paras.append(_paragraph(rng, rng.randint(2, 8)))
    return "\n\n".join(paras)


def _check_offsets(text: str, chunks: list[Chunk]) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.text == c.text.strip()  # the library trims whitespace; offsets point at the trimmed text
        assert c.text
    starts = [c.start for c in chunks]
    assert starts == sorted(starts)


def test_default_tokenizer_is_packaged_minilm() -> None:
    path = default_tokenizer_path()
    assert path.name == "tokenizer.json"
    assert path.is_file()
    assert path.parent.name == "model"


def test_every_chunk_within_max_tokens(chunker: Chunker, long_text: str) -> None:
    chunks = chunker.chunk(long_text)
    assert len(chunks) > 10
    sizes = [chunker.count_tokens(c.text) for c in chunks]
    assert max(sizes) <= chunker.config.max_tokens
    # Chunks are filled, not tiny: the splitter packs paragraphs up to the limit.
    assert sum(sizes) / len(sizes) > chunker.config.max_tokens / 2
    # With [CLS]/[SEP] every chunk still fits MiniLM's 256-token window.
    assert max(sizes) + 2 <= 256


def test_offsets_map_back_to_original(chunker: Chunker, long_text: str) -> None:
    _check_offsets(long_text, chunker.chunk(long_text))


def test_offsets_are_character_offsets_for_non_ascii(chunker: Chunker) -> None:
    rng = random.Random(3)
    text = "\n\n".join(
        f"Café naïve résumé 東京 ✨ {_paragraph(rng, 4)} Ünïcödé — “quotes” 🚀." for _ in range(30)
    )
    chunks = chunker.chunk(text)
    assert len(chunks) > 1
    _check_offsets(text, chunks)
    assert all(chunker.count_tokens(c.text) <= chunker.config.max_tokens for c in chunks)


@pytest.mark.parametrize("seed", range(5))
def test_consecutive_chunks_overlap_within_a_paragraph(seed: int) -> None:
    # One long paragraph of short sentences: the splitter cuts at sentence boundaries and the
    # overlap is made of whole sentences, so every boundary overlaps (up to overlap_tokens).
    config = ChunkingConfig(max_tokens=100, overlap_tokens=30)
    chunker = Chunker(config)
    text = _paragraph(random.Random(seed), 80, words=(3, 8))
    chunks = chunker.chunk(text)
    assert len(chunks) > 3
    _check_offsets(text, chunks)
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start < prev.end, f"chunks {prev.index} and {nxt.index} do not overlap"
        shared = text[nxt.start : prev.end]
        assert prev.text.endswith(shared.rstrip())
        assert nxt.text.startswith(shared.strip())
        assert chunker.count_tokens(shared) <= config.overlap_tokens
        assert nxt.end > prev.end  # progress


def test_overlap_is_whole_units_so_may_be_absent_at_a_boundary() -> None:
    # Documented library behaviour: overlap is built from whole semantic units of the level the
    # chunk was cut at. Sentences longer than overlap_tokens cannot overlap; limits still hold.
    chunker = Chunker(ChunkingConfig(max_tokens=64, overlap_tokens=4))
    text = _paragraph(random.Random(1), 40, words=(10, 18))
    chunks = chunker.chunk(text)
    assert len(chunks) > 3
    _check_offsets(text, chunks)
    assert all(chunker.count_tokens(c.text) <= 64 for c in chunks)
    assert all(nxt.start >= prev.end for prev, nxt in itertools.pairwise(chunks))


def test_no_overlap_when_overlap_is_zero() -> None:
    chunker = Chunker(ChunkingConfig(max_tokens=100, overlap_tokens=0))
    text = _paragraph(random.Random(11), 80)
    chunks = chunker.chunk(text)
    assert len(chunks) > 3
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start >= prev.end


def test_short_text_is_one_chunk(chunker: Chunker) -> None:
    text = "  Forge routes questions to the right model.\n"
    chunks = chunker.chunk(text)
    assert chunks == [Chunk(index=0, text=text.strip(), start=2, end=2 + len(text.strip()))]
    assert chunker.chunk(text, markdown=True) == chunks


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \n"])
@pytest.mark.parametrize("markdown", [False, True])
def test_empty_or_whitespace_gives_no_chunks(chunker: Chunker, text: str, markdown: bool) -> None:
    assert chunker.chunk(text, markdown=markdown) == []


def test_count_tokens_excludes_special_tokens_and_is_not_truncated(chunker: Chunker) -> None:
    assert chunker.count_tokens("") == 0
    assert chunker.count_tokens("hello world") == 2
    # The packaged tokenizer.json truncates/pads to 128; the chunker must not.
    assert chunker.count_tokens("word " * 500) == 500


def test_small_max_tokens_not_inflated_by_padding() -> None:
    # Were the tokenizer's fixed padding to 128 left on, no chunk could fit in 32 tokens.
    chunker = Chunker(ChunkingConfig(max_tokens=32, overlap_tokens=4))
    text = _paragraph(random.Random(5), 20)
    chunks = chunker.chunk(text)
    assert len(chunks) > 5
    assert all(chunker.count_tokens(c.text) <= 32 for c in chunks)


def _manual() -> str:
    sections = []
    for name in ("Installation", "Configuration", "Operations", "Troubleshooting"):
        body = " ".join(
            f"Sentence {j} about {name.lower()} explains one detail of the appliance." for j in range(6)
        )
        sections.append(f"## {name}\n\n{body}")
    return "# Manual\n\n" + "\n\n".join(sections) + "\n"


@pytest.mark.parametrize("overlap", [0, 32])
def test_markdown_keeps_headings_with_their_section(overlap: int) -> None:
    # Each section (~80 tokens) fits a chunk, two do not: each chunk should be one whole section.
    chunker = Chunker(ChunkingConfig(max_tokens=120, overlap_tokens=overlap))
    text = _manual()
    chunks = chunker.chunk(text, markdown=True)
    _check_offsets(text, chunks)
    assert all(chunker.count_tokens(c.text) <= 120 for c in chunks)
    headings = re.findall(r"^## .+$", text, flags=re.MULTILINE)
    assert len(chunks) == len(headings)
    for chunk, heading in zip(chunks, headings, strict=True):
        first_section_heading = re.findall(r"^## .+$", chunk.text, flags=re.MULTILINE)
        assert first_section_heading == [heading]  # exactly its own heading, at its section's start
        assert not re.search(r"^#+ .*\Z", chunk.text, flags=re.MULTILINE)  # no dangling heading at the end
    assert chunks[1].text.startswith("## Configuration\n")


def test_markdown_large_section_is_split_within_limit(chunker: Chunker) -> None:
    rng = random.Random(2)
    text = "# Big\n\n" + "\n\n".join(_paragraph(rng, 6) for _ in range(20)) + "\n\n## Small\n\nTail text."
    chunks = chunker.chunk(text, markdown=True)
    assert len(chunks) > 2
    _check_offsets(text, chunks)
    assert all(chunker.count_tokens(c.text) <= chunker.config.max_tokens for c in chunks)
    # A heading is never separated from its body (it may share a chunk with earlier paragraphs when
    # the small section fits after them: the splitter packs chunks up to the limit).
    assert chunks[-1].text.endswith("\n\n## Small\n\nTail text.")
    assert not any(re.search(r"^#+ .*\Z", c.text, flags=re.MULTILINE) for c in chunks)


def test_shared_across_threads(chunker: Chunker, long_text: str) -> None:
    expected = chunker.chunk(long_text)
    expected_md = chunker.chunk(long_text, markdown=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: chunker.chunk(long_text, markdown=bool(i % 2)), range(16)))
    for i, result in enumerate(results):
        assert result == (expected_md if i % 2 else expected)


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "message"),
    [
        (15, 0, "max_tokens must be >= 16"),
        (0, 0, "max_tokens must be >= 16"),
        (100, 100, r"overlap_tokens \(100\) must be less than max_tokens \(100\)"),
        (100, 150, r"overlap_tokens \(150\) must be less than max_tokens \(100\)"),
        (100, -1, "overlap_tokens must be >= 0"),
    ],
)
def test_config_validation(max_tokens: int, overlap: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap)


def test_config_defaults() -> None:
    config = ChunkingConfig()
    assert (config.max_tokens, config.overlap_tokens) == (200, 32)
    assert ChunkingConfig(max_tokens=16, overlap_tokens=15).max_tokens == 16


@pytest.mark.parametrize("run", ["é", "\x00", "😀", "x"])
def test_a_run_read_as_one_token_is_cut_to_max_chars(run: str) -> None:
    """The fuzzer's find: "x " + "é" * 10000 was one 10,002-character chunk, which the embed
    service refuses (8192 characters), so the router's Ingest answered INTERNAL."""
    chunker = Chunker(ChunkingConfig(max_chars=4096))
    text = "x " + run * 10_000
    chunks = chunker.chunk(text)
    assert max(len(c.text) for c in chunks) <= 4096
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(text[c.start : c.end] == c.text for c in chunks)
