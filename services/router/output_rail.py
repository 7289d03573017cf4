"""Cuts the streamed answer into segments the output rail checks before they are released.

Checking every token would cost a guardrails call per token; checking only the whole answer
would release unchecked text. A segment ends at a sentence end or line break (or is cut at a
word boundary once it reaches `max_chars`), so a finding such as a phone number is seen whole in
one segment, and the caller gets text sentence by sentence."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A sentence end followed by whitespace, or a line break.
_BOUNDARY = re.compile(r"[.!?](?=\s)|\n")


@dataclass
class Segmenter:
    max_chars: int = 320
    _pending: str = field(default="", init=False)

    def feed(self, text: str) -> list[str]:
        """Complete segments after adding `text`; the incomplete rest stays pending."""
        self._pending += text
        segments: list[str] = []
        while True:
            cut = self._cut_point()
            if cut is None:
                return segments
            segments.append(self._pending[:cut])
            self._pending = self._pending[cut:]

    def flush(self) -> str:
        """Whatever is pending, at the end of the answer."""
        rest, self._pending = self._pending, ""
        return rest

    def _cut_point(self) -> int | None:
        match = _BOUNDARY.search(self._pending)
        # Include the whitespace after the sentence end, so segments join back to the answer.
        if match is not None:
            end = match.end()
            while end < len(self._pending) and self._pending[end] in " \t":
                end += 1
            if end < len(self._pending) or self._pending[match.start()] == "\n":
                return end
            return None  # the trailing whitespace may continue; wait for more text
        if len(self._pending) >= self.max_chars:
            space = self._pending.rfind(" ", 0, self.max_chars)
            return space + 1 if space > 0 else self.max_chars
        return None
