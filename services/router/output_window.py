"""What the output rail sees of a streaming answer: each check covers the text not yet released
plus a little of what was, and the last `holdback` characters are released only once text after
them (or the answer's end) was checked with them. So an entity written across segments (a card
number one group per line, a phone split by a line break) is seen whole before any of it leaves,
and no release cuts through a finding. No gRPC here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from services.router.ports import RailFinding, RailVerdict


@dataclass
class OutputWindow:
    # Already-released characters each check sees before the new text.
    context: int = 96
    # Characters held back until what follows them was checked with them; longer than the
    # longest entity a rail redacts whole (IBAN 34, a spaced card number 23, most emails).
    holdback: int = 96
    _text: str = field(default="", init=False)
    _released: int = field(default=0, init=False)

    def add(self, segment: str) -> None:
        self._text += segment

    def due(self, final: bool) -> bool:
        """Whether a check now could release anything."""
        unreleased = len(self._text) - self._released
        return unreleased > 0 if final else unreleased > self.holdback

    def window(self) -> tuple[int, str]:
        """(offset in the answer, text) to check: the unreleased text and some context before it."""
        start = max(0, self._released - self.context)
        return start, self._text[start:]

    def release(self, start: int, verdict: RailVerdict | None, final: bool) -> str:
        """The text that may go to the caller now, redacted as `verdict` (on window(), which began
        at `start`) says; None = unchecked (rails off or failing open), released as it is."""
        findings = verdict.findings if verdict is not None else ()
        end = len(self._text) if final else max(self._released, len(self._text) - self.holdback)
        moved = True
        while moved and not final:  # never cut through a finding: hold it back whole
            moved = False
            for f in findings:
                # A finding that began in text already released cannot be held back whole; the
                # end only ever moves back, down to what was released.
                held = max(self._released, start + f.start)
                if start + f.start < end < start + f.end and held < end:
                    end, moved = held, True
        out = _render(self._text, findings, start, self._released, end)
        self._released = end
        return out


def _render(text: str, findings: Sequence[RailFinding], offset: int, start: int, end: int) -> str:
    """text[start:end] with redacted findings (offsets from `offset`) masked as <LABEL>;
    overlapping spans merge into one mask named after the longest of them."""
    spans = sorted(
        (f.start + offset, f.end + offset, f.category) for f in findings if f.redacted and f.end > f.start
    )
    merged: list[tuple[int, int, str, int]] = []  # start, end, label, length of the label's span
    for s, e, category in spans:
        label = category.split(".", 1)[-1].upper()
        if merged and s < merged[-1][1]:
            ms, me, mlabel, mlen = merged[-1]
            merged[-1] = (ms, max(me, e), label if e - s > mlen else mlabel, max(mlen, e - s))
        else:
            merged.append((s, e, label, e - s))
    out: list[str] = []
    pos = start
    for s, e, label, _ in merged:
        if e <= start or s >= end:
            continue
        # A span whose start already left (longer than the holdback) is masked from here on.
        out.append(text[pos : max(s, pos)])
        out.append(f"<{label}>")
        pos = max(pos, min(e, end))
    out.append(text[pos:end])
    return "".join(out)
