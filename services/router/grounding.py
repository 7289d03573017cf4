"""What the output rail may let through unredacted: the tenant's own chunks that went into the
prompt and the caller's own messages (grounded redaction, decided by the guardrails policy).
Kept within what the guardrails service accepts (64 texts, 262,144 characters)."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.ports import ContextChunk, Grounding, Message

MAX_TEXTS = 64
MAX_CHARS = 262_144


def grounding_for(messages: Sequence[Message], chunks: Sequence[ContextChunk]) -> list[Grounding]:
    """Chunks first (best first, as the prompt holds them), then the caller's messages, latest
    first; whatever does not fit the limits is left out (its entities are then redacted)."""
    # The document id too: the prompt names each source by it, and an answer that repeats it
    # ("see runbook.md") must not have it redacted as a URL.
    candidates = [
        Grounding(f"chunk {c.document_id}#{c.chunk_index}", f"{c.document_id}\n{c.text}") for c in chunks
    ]
    candidates += [Grounding(f"message {i}", m.content) for i, m in reversed(list(enumerate(messages)))]
    grounding: list[Grounding] = []
    total = 0
    for g in candidates:
        if len(grounding) == MAX_TEXTS:
            break
        if total + len(g.text) > MAX_CHARS:
            continue
        grounding.append(g)
        total += len(g.text)
    return grounding
