"""Normalisation before any rail looks at a text: NFKC, invisible characters stripped, a line
break between digit groups read as one space (a card or phone number written one group per line
is still a number to the PII rail), and encoded payloads (base64, rot13) decoded so that rails
scan what a model would read.

Every normalised character keeps the index of the original character it came from, so rails
report spans in the caller's text, not in the normalised copy.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass, field

# Zero-width and other invisible format characters used to split trigger words.
_INVISIBLE = frozenset(
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u200e\u200f"
    "\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069"
    "\u206a\u206b\u206c\u206d\u206e\u206f\ufeff\ufe00\ufe01\ufe02\ufe03\ufe0e\ufe0f"
)
# Whitespace with a line break in it, between a digit and the next digit group.
_DIGIT_LINE_BREAK = re.compile(r"(?<=\d)[ \t]*(?:\r?\n[ \t]*)+(?=[\d+(])")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_WORD = re.compile(r"[a-z]+")
# Frequent English words: a rot13 reading that hits more of these than the text itself is a payload.
_COMMON = frozenset(
    """
    the be to of and a in that have i it for not on with he as you do at this but his by from they
    we say her she or an will my one all would there their what so up out if about who get which go
    me when make can like time no just him know take people into year your good some could them see
    other than then now look only come its over think also back after use two how our work first
    well way even new want because any these give day most us is are was were ignore previous
    instructions tell reveal system prompt password secret rules
    """.split()  # noqa: SIM905
)


@dataclass(frozen=True)
class Payload:
    """A decoded segment: `text` is what the encoded span [start, end) of the original says."""

    kind: str  # "base64" or "rot13"
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Normalized:
    original: str
    text: str
    # offsets[i] = index in `original` of the character that produced text[i]; len(text) + 1 entries.
    offsets: tuple[int, ...]
    invisible_removed: int = 0
    payloads: tuple[Payload, ...] = field(default_factory=tuple)

    def span_in_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a span of the normalised text back to the original text."""
        start = max(0, min(start, len(self.text)))
        end = max(start, min(end, len(self.text)))
        if end == start:
            return self.offsets[start], self.offsets[start]
        return self.offsets[start], self.offsets[end - 1] + 1

    def views(self) -> list[tuple[str, Payload | None]]:
        """The normalised text, then each decoded payload: what content rails score."""
        return [(self.text, None), *((p.text, p) for p in self.payloads)]


def _printable_ratio(text: str) -> float:
    if not text:
        return 0.0
    good = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    return good / len(text)


def _decode_base64(token: str) -> str | None:
    padded = token + "=" * (-len(token) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(padded.encode("ascii"))
        except (binascii.Error, ValueError):
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        letters = sum(c.isalpha() for c in text)
        if len(text) >= 6 and _printable_ratio(text) > 0.95 and letters >= len(text) * 0.5 and " " in text:
            return text
    return None


def _common_word_hits(text: str) -> int:
    return sum(1 for w in _WORD.findall(text.lower()) if w in _COMMON)


def _rot13_payload(text: str) -> str | None:
    """The rot13 reading of the whole text when it reads as English better than the text itself."""
    words = _WORD.findall(text.lower())
    if len(words) < 3:
        return None
    decoded = codecs.decode(text, "rot13")
    plain_hits = _common_word_hits(text)
    rot_hits = _common_word_hits(decoded)
    if rot_hits >= 3 and rot_hits > 2 * plain_hits:
        return decoded
    return None


def _join_digit_lines(text: str, offsets: list[int]) -> tuple[str, list[int]]:
    """Each line-breaking whitespace run between digit groups becomes one space, which maps to
    the run's first character in the original."""
    if "\n" not in text:
        return text, offsets
    pieces: list[str] = []
    joined: list[int] = []
    pos = 0
    for match in _DIGIT_LINE_BREAK.finditer(text):
        pieces.append(text[pos : match.start()])
        joined.extend(offsets[pos : match.start()])
        pieces.append(" ")
        joined.append(offsets[match.start()])
        pos = match.end()
    if not pieces:
        return text, offsets
    pieces.append(text[pos:])
    joined.extend(offsets[pos:])
    return "".join(pieces), joined


def normalize(original: str) -> Normalized:
    pieces: list[str] = []
    offsets: list[int] = []
    removed = 0
    for i, ch in enumerate(original):
        if ch in _INVISIBLE or (unicodedata.category(ch) == "Cf" and ch not in "\n\t"):
            removed += 1
            continue
        folded = unicodedata.normalize("NFKC", ch)
        pieces.append(folded)
        offsets.extend([i] * len(folded))
    text, offsets = _join_digit_lines("".join(pieces), offsets)
    offsets.append(len(original))
    payloads: list[Payload] = []
    for match in _BASE64.finditer(text):
        decoded = _decode_base64(match.group(0))
        if decoded is not None:
            start = offsets[match.start()]
            end = offsets[match.end() - 1] + 1
            payloads.append(Payload("base64", unicodedata.normalize("NFKC", decoded), start, end))
    rot = _rot13_payload(text)
    if rot is not None:
        payloads.append(Payload("rot13", rot, 0, len(original)))
    return Normalized(original, text, tuple(offsets), removed, tuple(payloads))
