"""What the load was told about its documents, and the check of what the router holds against it.

A document's acknowledged version is the last one the router answered for in an Ingest stream (the
per-document IngestResponse: the issue makes that acknowledgement mean durable). Versions sent
after it whose call then failed are in doubt: the router may or may not have taken them. After a
fault each document must be, whole, its acknowledged version or one in doubt: exactly that
version's chunks (chunk indexes 0..n-1, each with that version's text), nothing of another version.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tests.chaos.corpus import VERSION_KEY, Doc, expected_chunks


@dataclass
class DocState:
    doc: Doc
    next_version: int = 1
    acked: int | None = None
    in_doubt: set[int] = field(default_factory=set)

    def candidates(self) -> set[int]:
        return self.in_doubt | ({self.acked} if self.acked is not None else set())


@dataclass(frozen=True)
class Hit:
    """A Search hit, as the check needs it."""

    document_id: str
    chunk_index: int
    text: str
    metadata: dict[str, str]


@dataclass
class Verdict:
    """The outcome of one check: `lost` counts documents whose acknowledged content is gone
    (missing, an older version back, mixed or incomplete); `problems` says what, per document."""

    documents: int = 0
    lost: int = 0
    mixed: int = 0
    problems: list[str] = field(default_factory=list)


class Ledger:
    def __init__(self, docs: Iterable[Doc]) -> None:
        self.docs: dict[str, DocState] = {d.id: DocState(d) for d in docs}
        # Acks whose chunk count differs from the version's: the router told the client a wrong count.
        self.bad_acks: list[str] = []

    def of_tenant(self, tenant: str) -> list[DocState]:
        return [s for s in self.docs.values() if s.doc.tenant == tenant]

    def send(self, doc_id: str) -> int:
        """The next version of a document, noted as in doubt until acknowledged."""
        state = self.docs[doc_id]
        version = state.next_version
        state.next_version += 1
        state.in_doubt.add(version)
        return version

    def ack(self, doc_id: str, version: int, chunk_count: int) -> None:
        state = self.docs[doc_id]
        expected = len(expected_chunks(state.doc.topic, version))
        if chunk_count != expected:
            self.bad_acks.append(
                f"{doc_id} v{version}: acknowledged with {chunk_count} chunks, the version has {expected}"
            )
        state.acked = version
        # Versions are sent one after another per document: nothing older is in doubt any more.
        state.in_doubt = {v for v in state.in_doubt if v > version}

    def check(self, tenant: str, hits: Sequence[Hit], top_k: int) -> Verdict:
        verdict = Verdict()
        by_doc: dict[str, list[Hit]] = defaultdict(list)
        for hit in hits:
            by_doc[hit.document_id].append(hit)
        if len(hits) >= top_k:
            verdict.problems.append(
                f"{tenant}: Search returned {len(hits)} hits, the whole top_k: more chunks than the "
                "corpus can have (stale rows?); the check below may miss some"
            )
        mine = {s.doc.id for s in self.of_tenant(tenant)}
        for other in sorted(set(by_doc) - mine):
            verdict.problems.append(f"{tenant}: Search returned {other!r}, not one of the tenant's documents")
        for state in self.of_tenant(tenant):
            verdict.documents += 1
            problem, lost, mixed = _check_document(state, by_doc.get(state.doc.id, []))
            if problem:
                verdict.problems.append(problem)
            verdict.lost += lost
            verdict.mixed += mixed
        return verdict


def _check_document(state: DocState, hits: list[Hit]) -> tuple[str, int, int]:
    """(problem or "", lost 0/1, mixed 0/1) for one document."""
    doc = state.doc
    acked = f"v{state.acked}" if state.acked is not None else "none"
    what = f"{doc.id} (acknowledged {acked}, in doubt {sorted(state.in_doubt) or 'none'})"
    acked_lost = int(state.acked is not None)
    if not hits:
        if state.acked is None:
            return "", 0, 0  # never acknowledged: absent is allowed
        return f"{what}: not searchable", 1, 0
    versions = {h.metadata.get(VERSION_KEY, "?") for h in hits}
    if len(versions) > 1:
        return f"{what}: a mix of versions {sorted(versions)} ({len(hits)} chunks)", acked_lost, 1
    (found,) = versions
    if not found.isdigit() or int(found) not in state.candidates():
        return f"{what}: holds v{found}, neither acknowledged nor in doubt", acked_lost, 0
    version = int(found)
    expected = expected_chunks(doc.topic, version)
    indexes = sorted(h.chunk_index for h in hits)
    if indexes != list(range(len(expected))):
        return (
            f"{what}: v{version} has chunk indexes {indexes}, expected 0..{len(expected) - 1}",
            acked_lost,
            0,
        )
    for hit in hits:
        if hit.text != expected[hit.chunk_index]:
            return (
                f"{what}: v{version} chunk {hit.chunk_index} is not that version's text "
                f"({hit.text[:60]!r}...)",
                acked_lost,
                0,
            )
    return "", 0, 0
