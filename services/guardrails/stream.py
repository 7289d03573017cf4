"""Incremental output checking: the LLM's answer arrives in chunks; each chunk is checked together
with a tail of what came before (so a phone number split across two chunks is still seen), and
findings are reported once, with offsets in the whole answer so far."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.guardrails.engine import Finding, Guard, Verdict
from services.guardrails.policy import Action, Stage


@dataclass
class StreamVerdict:
    blocked: bool
    new_findings: list[Finding]
    # Text that is safe to release now (redacted where the policy says redact); the last `overlap`
    # characters are held back until more text (or `finish`) shows they are complete.
    release: str


@dataclass
class OutputStream:
    guard: Guard
    overlap: int = 64
    _text: str = ""
    _released: int = 0  # characters of _text already released
    _seen: set[tuple[str, str, int, int]] = field(default_factory=set)
    blocked: bool = False

    async def feed(self, chunk: str) -> StreamVerdict:
        self._text += chunk
        return await self._check(final=False)

    async def finish(self) -> StreamVerdict:
        return await self._check(final=True)

    async def _check(self, final: bool) -> StreamVerdict:
        if self.blocked:
            return StreamVerdict(True, [], "")
        window_start = max(0, self._released - self.overlap)
        window = self._text[window_start:]
        if not window.strip():
            return StreamVerdict(False, [], "")
        verdict: Verdict = await self.guard.check(window, Stage.OUTPUT)
        new: list[Finding] = []
        for f in verdict.findings:
            shifted = Finding(
                f.rail, f.category, f.score, f.start + window_start, f.end + window_start, f.action
            )
            key = (shifted.rail, shifted.category, shifted.start, shifted.end)
            if key not in self._seen:
                self._seen.add(key)
                new.append(shifted)
        if verdict.decision is Action.BLOCK:
            self.blocked = True
            return StreamVerdict(True, new, "")
        # Hold back the tail (a span may continue in the next chunk) and never cut through a hit.
        end = len(self._text) if final else max(self._released, len(self._text) - self.overlap)
        for f in verdict.findings:
            if not final and window_start + f.start < end < window_start + f.end:
                end = max(self._released, window_start + f.start)
        release = _slice_redacted(window, verdict, self._released - window_start, end - window_start)
        self._released = end
        return StreamVerdict(False, new, release)


def _slice_redacted(original: str, verdict: Verdict, start: int, end: int) -> str:
    """The redacted rendering of original[start:end]: overlapping redacted spans merge into one
    mask labelled by the longest finding among them."""
    spans = sorted(
        (f.start, f.end, f.category)
        for f in verdict.findings
        if f.action is Action.REDACT and f.end > f.start
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
        out.append(original[pos : max(s, pos)])
        out.append(f"<{label}>")
        pos = max(pos, min(e, end))
    out.append(original[pos:end])
    return "".join(out)
