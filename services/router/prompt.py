"""The prompt a grounded answer is generated from: the system instruction, the retrieved context
documents (numbered, with their source), and the conversation."""

from __future__ import annotations

from collections.abc import Sequence

from services.router.ports import ContextChunk, Message


def context_entry(number: int, chunk: ContextChunk) -> str:
    return f"[{number}] (document {chunk.document_id}, part {chunk.chunk_index + 1})\n{chunk.text.strip()}\n"


def system_message(system_prompt: str, chunks: Sequence[ContextChunk]) -> Message:
    if not chunks:
        return Message("system", system_prompt)
    entries = "\n".join(context_entry(n, c) for n, c in enumerate(chunks, start=1))
    return Message("system", f"{system_prompt}\n\nContext documents:\n\n{entries}")


def assemble(
    system_prompt: str, conversation: Sequence[Message], chunks: Sequence[ContextChunk]
) -> list[Message]:
    """System message with the context, then the caller's conversation. A system message of the
    caller's own is kept, after ours, so it can refine the instruction."""
    return [system_message(system_prompt, chunks), *conversation]
