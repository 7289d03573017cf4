"""Cuts the streamed answer into segments the output rail checks before they are released.

Checking every token would cost a guardrails call per token; checking only the whole answer
would release unchecked text. A segment ends at a sentence end or line break (or is cut at a
word boundary once its text reaches `max_chars`), so a finding such as a phone number is seen
whole in one segment, and the caller gets text sentence by sentence.

The rail rejects empty or whitespace-only text, and a model writes blank lines, indentation and
trailing spaces all the time. So whitespace never forms a segment of its own: whitespace after a
cut (blank lines, the next line's indentation, "\\r\\n") goes with the segment before it, and
whitespace at the start of the answer waits for the first real text. Segments always join back
exactly to the answer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A sentence end followed by whitespace, or a line break.
_BOUNDARY = re.compile(r"[.!?](?=\s)|\n")
# Text before a sentence end that is only a list number: "1. " starts an item, it ends nothing.
_LIST_NUMBER = re.compile(r"\d+")
_UP_TO_LAST_SPACE = re.compile(r".*\s", re.DOTALL)


@dataclass
class Segmenter:
    # Longest segment text before a cut at a word; the whitespace that goes with it comes on top.
    max_chars: int = 320
    _pending: str = field(default="", init=False)

    def feed(self, text: str) -> list[str]:
        """Complete segments after adding `text`; the incomplete rest stays pending. Every
        segment holds some non-whitespace text (the output rail can check it)."""
        self._pending += text
        segments: list[str] = []
        while (cut := self._cut_point()) is not None:
            segments.append(self._pending[:cut])
            self._pending = self._pending[cut:]
        return segments

    def flush(self) -> str:
        """Whatever is pending, at the end of the answer: the last segment. It is empty when
        nothing is pending, and whitespace-only when the whole answer was whitespace (never
        otherwise); the caller releases such text without the rail, which rejects it and could
        find nothing in it."""
        rest, self._pending = self._pending, ""
        return rest

    def _cut_point(self) -> int | None:
        pending = self._pending
        # Only the answer's start can be whitespace (a cut takes the whitespace after it), and
        # a boundary in there would cut a whitespace-only segment: look after it.
        start = len(pending) - len(pending.lstrip())
        limit = start + self.max_chars
        cut = None
        for match in _BOUNDARY.finditer(pending, start):
            if match.group() == "." and _LIST_NUMBER.fullmatch(pending, start, match.start()):
                continue
            if match.start() < limit:
                cut = match.end()
            break
        if cut is None:
            if len(pending) <= limit:  # the next character may make the last one a sentence end
                return None
            # No boundary within max_chars: cut after the last space in it, mid-word if none.
            space = _UP_TO_LAST_SPACE.match(pending, start, limit)
            cut = space.end() if space is not None else limit
        # The whitespace after the cut goes with this segment; if the pending text ends in it,
        # more may follow (a blank line, indentation), so wait for the next real text.
        end = cut
        while end < len(pending) and pending[end].isspace():
            end += 1
        return end if end < len(pending) else None
