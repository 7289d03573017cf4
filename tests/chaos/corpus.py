"""The documents the load ingests: each version of a document is a different text with a different
number of chunks, and every chunk of it says which version it belongs to, so a document made of
two versions (an old version's tail beside a new head) is seen for what it is.

The text is plain prose with no digits, names or addresses: the retrieval rail must neither block
nor redact it, or a chunk found would not read as the chunk stored. The expected chunks come from
the router's own chunker with the router's settings, so they are exactly what it stores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from services.router.chunking import Chunker, ChunkingConfig
from services.router.settings import RouterSettings

TOPICS = ("greenhouse", "lighthouse", "observatory")
# Paragraphs per version, in turn: a version with fewer chunks than the one before is the case
# where an old version's tail could outlive it.
SECTIONS = (3, 1, 2)
SENTENCES_PER_SECTION = 7
THINGS = ("the lantern", "the water tank", "the east window", "the ladder", "the brass bell", "the cellar")
STATES = ("polished", "refilled", "repainted", "inspected", "replaced", "cleaned")
# Top-k a Search may ask for (the router's max_top_k): a tenant's whole corpus must fit in one.
MAX_CHUNKS_PER_TENANT = 32
VERSION_KEY = "chaos_version"


def marker(version: int) -> str:
    """A word naming the version, in letters only (digits could read as numbers to the PII rail)."""
    letters = ""
    n = version
    while True:
        n, digit = divmod(n, 26)
        letters = chr(ord("a") + digit) + letters
        if n == 0:
            break
    return "rev" + letters


def document_text(topic: str, version: int) -> str:
    word = marker(version)
    sections = []
    for s in range(SECTIONS[version % len(SECTIONS)]):
        sentences = [
            f"In revision {word} the {topic} keeper notes that {THINGS[(s + i) % len(THINGS)]} "
            f"was {STATES[(version + s + i) % len(STATES)]} during the {('morning', 'evening')[i % 2]} round."
            for i in range(SENTENCES_PER_SECTION)
        ]
        sections.append(" ".join(sentences))
    return "\n\n".join(sections)


@functools.cache
def _chunker() -> Chunker:
    s = RouterSettings()
    return Chunker(
        ChunkingConfig(
            max_tokens=s.chunk_max_tokens, overlap_tokens=s.chunk_overlap_tokens, max_chars=s.chunk_max_chars
        )
    )


@functools.cache
def expected_chunks(topic: str, version: int) -> tuple[str, ...]:
    """The chunk texts the router stores for this version, in order (chunk_index = position)."""
    return tuple(c.text for c in _chunker().chunk(document_text(topic, version)))


@dataclass(frozen=True)
class Doc:
    """One of a tenant's documents; its id names its tenant, so a citation or hit of another
    tenant's document is recognised."""

    tenant: str
    topic: str

    @property
    def id(self) -> str:
        return f"{self.tenant}-{self.topic}"

    def metadata(self, version: int) -> dict[str, str]:
        return {VERSION_KEY: str(version), "source": "chaos"}

    def question(self) -> str:
        return f"What did the {self.topic} keeper note about the lantern?"


def corpus(tenant: str) -> list[Doc]:
    docs = [Doc(tenant, topic) for topic in TOPICS]
    most = sum(max(len(expected_chunks(d.topic, v)) for v in range(len(SECTIONS))) for d in docs)
    # A Search of top_k MAX_CHUNKS_PER_TENANT must return every chunk the tenant has.
    assert most <= MAX_CHUNKS_PER_TENANT, f"the corpus can reach {most} chunks: too many for one Search"
    return docs
