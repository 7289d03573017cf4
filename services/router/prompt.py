"""The prompt a grounded answer is generated from: an instruction to answer only from numbered
sources and to say when they do not hold the answer, the sources themselves ([1], [2], ... with the
document each came from), and the conversation. Where the sources go depends on the model family
(`PromptStyle`); which sources the answer used is read back from its [n] markers (`cited_numbers`),
or, when it wrote none, from the figures it repeats (`source_holding_figures`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.router.ports import ContextChunk, Message

SOURCES_HEADER = "Sources:"
# Longer than the header, so a prompt counted without sources never undercounts one with them.
NO_SOURCES = "Sources: none of the documents matched this question, so the documents do not say."


# The instruction of a grounded chat, unless the operator sets FORGE_ROUTER_SYSTEM_PROMPT.
GROUNDED_INSTRUCTION = (
    "You answer questions using only the numbered sources you are given. Keep the answer short "
    "and copy names, numbers and part numbers exactly as the sources write them. After each "
    "fact, write the number of its source in brackets, like [1]. If the sources do not contain "
    "the answer, say that the documents do not say, and do not guess."
)
# Qwen2.5-0.5B answered GROUNDED_INSTRUCTION with the marker alone ("[1]"); asked for whole
# sentences with an example it stated the fact in 13 of 16 eval questions (bench/answer_eval.py).
SENTENCE_INSTRUCTION = (
    "Answer the question in one or two full sentences, using only the numbered sources below. "
    "Copy names, numbers and part numbers exactly as the sources write them. End each sentence "
    'with the number of its source in brackets, for example: "The filter is part 1234-A [2]." '
    'If the sources do not contain the answer, say "The documents do not say." and do not guess.'
)


@dataclass(frozen=True)
class PromptStyle:
    """How one model family takes a grounded prompt, read off its chat template."""

    family: str
    # Sources in the last user turn, before the question: for templates with no system role of
    # their own (Gemma's, Mistral's), which fold or refuse a system message. SmolLM2 has one, and
    # answered as well with the sources there (7 of 24 eval facts either way) but echoed the
    # "Question:" line back when they sat in its turn.
    sources_in_user_turn: bool
    # The grounded instruction this family follows best (measured in bench/answer_eval.py).
    instruction: str = GROUNDED_INSTRUCTION


GENERIC = PromptStyle("generic", sources_in_user_turn=False)
# Matched in order against the served model's name, lower-cased.
STYLES: tuple[tuple[str, PromptStyle], ...] = (
    ("smollm", PromptStyle("smollm", sources_in_user_turn=False)),
    ("gemma", PromptStyle("gemma", sources_in_user_turn=True)),
    ("qwen", PromptStyle("qwen", sources_in_user_turn=False, instruction=SENTENCE_INSTRUCTION)),
    ("llama", PromptStyle("llama", sources_in_user_turn=False)),
    ("mistral", PromptStyle("mistral", sources_in_user_turn=True)),  # no system role in v0.1-v0.3
)


def style_for(model_name: str, choice: str = "auto") -> PromptStyle:
    """The family's style, or the operator's choice ("system" / "user") for a model not listed."""
    if choice != "auto":
        return PromptStyle(choice, sources_in_user_turn=choice == "user")
    name = model_name.lower()
    return next((style for key, style in STYLES if key in name), GENERIC)


def context_entry(number: int, chunk: ContextChunk) -> str:
    return f"[{number}] (from {chunk.document_id}, part {chunk.chunk_index + 1})\n{chunk.text.strip()}\n"


def sources_block(chunks: Sequence[ContextChunk]) -> str:
    if not chunks:
        return NO_SOURCES
    entries = "\n".join(context_entry(n, c) for n, c in enumerate(chunks, start=1))
    return f"{SOURCES_HEADER}\n\n{entries}"


def assemble(
    instruction: str,
    conversation: Sequence[Message],
    chunks: Sequence[ContextChunk],
    style: PromptStyle = GENERIC,
    grounded: bool = True,
) -> list[Message]:
    """The messages for the LLM. `grounded` = the caller asked for retrieval: the instruction and
    the sources (or the note that none matched) go in; otherwise the conversation is the prompt,
    after the instruction alone. A system message of the caller's own is kept, after ours, so it
    can refine the instruction."""
    if not grounded:
        return [Message("system", instruction), *conversation]
    sources = sources_block(chunks)
    if not style.sources_in_user_turn or not conversation:
        return [Message("system", f"{instruction}\n\n{sources}"), *conversation]
    *earlier, question = conversation
    return [
        Message("system", instruction),
        *earlier,
        Message(question.role, f"{sources}\n\nQuestion: {question.content}"),
    ]


# [1], [2, 3], [1][4], [2-4]; at most three digits so years and part numbers in brackets are not
# read as sources (a number beyond the sources is ignored anyway).
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*(?:,|;|-|\u2013)\s*\d{1,3})*)\]")


def cited_numbers(answer: str, sources: int) -> frozenset[int]:
    """The source numbers (1..sources) the answer's [n] markers refer to."""
    found: set[int] = set()
    for marker in _MARKER.finditer(answer):
        for part in re.split(r"\s*[,;]\s*", marker.group(1)):
            ends = [int(n) for n in re.split(r"\s*[-\u2013]\s*", part)]
            if len(ends) == 2 and ends[0] <= ends[1]:
                found.update(range(ends[0], min(ends[1], sources) + 1))
            else:
                found.update(ends)
    return frozenset(n for n in found if 1 <= n <= sources)


# A figure: a token with a digit in it ("50051", "5520-A", "10.20.0.5", "B24-07", "4.5"), as the
# answer and the sources write them; trailing sentence punctuation is not part of it.
_FIGURE = re.compile(r"[A-Za-z]*\d[\w./:-]*")


def _figures(text: str) -> set[str]:
    return {f.rstrip(".:/-") for f in _FIGURE.findall(text)} - {""}


def _holds(text: str, figure: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(figure)}(?![\w]|\.\d)", text) is not None


def source_holding_figures(answer: str, question: str, sources: Sequence[str]) -> int | None:
    """For an answer without [n] markers: the number (1..) of the source that holds the most of
    its figures, leaving out those the question already named (they are in every source that
    matched it); of sources holding as many, the best ranked (a bare "5" is in many). None when
    no source holds one of its figures: words alone are not attributed."""
    figures = _figures(answer) - _figures(question)
    held = [sum(_holds(text, f) for f in figures) for text in sources]
    if not any(held):
        return None
    return held.index(max(held)) + 1
