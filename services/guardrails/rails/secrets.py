"""Secrets: API keys, tokens and private keys by pattern (plus an entropy check for generic
`password = ...` assignments). Redaction masks them like PII.

The patterns run on RE2 (`google-re2`), whose matching time is linear in the text: Python's `re`
backtracks, and two of these patterns (JWT, connection string) took quadratic time on a long run
of almost-matching characters (a third of a second and more at 32k characters, holding the GIL).
The detections are those of the original Python patterns, kept in each entry's `python` field:
RE2's `\\w`, `\\s` and `\\b` are ASCII-only and it has no lookaround, so the RE2 forms spell out
Python's Unicode classes (taken from this interpreter's own tables) and consume the character on
either side of a word boundary, and `SecretPattern.finditer` resumes where Python's would.
"""

from __future__ import annotations

import array
import math
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import re2

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit


def _python_classes() -> tuple[str, str]:
    """Bodies of RE2 character classes holding exactly what Python's `re` calls `\\w` and `\\s` in
    a str pattern (Unicode-wide; RE2's own are ASCII-only)."""
    codec = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"
    every = array.array("I", range(sys.maxunicode + 1)).tobytes().decode(codec, "surrogatepass")

    def ranges(escape: str) -> str:
        parts = []
        for m in re.finditer(escape + "+", every):
            first, last = m.start(), m.end() - 1
            parts.append(f"\\x{{{first:X}}}" + (f"-\\x{{{last:X}}}" if last > first else ""))
        return "".join(parts)

    return ranges(r"\w"), ranges(r"\s")


_W, _S = _python_classes()
# Python's \b in front of a word character: the text starts there or a non-word character comes
# before (consumed; `s` marks where Python's match starts).
_WORD_START = rf"(?:\A|[^{_W}])(?P<s>)"
# Python's \b after a word character: the text ends or a non-word character follows (consumed;
# `e` marks where Python's match ends).
_WORD_END = rf"(?P<e>)(?:\z|[^{_W}])"
# Python's (?i) also folds "i" with the dotless and dotted capital I; RE2 folds only ASCII I.
_CI_LETTERS = r"A-Za-z\x{130}\x{131}\x{17F}\x{212A}"  # (?i)[a-z] in Python
_CI_I = r"[i\x{130}\x{131}]"  # (?i)i in Python, inside an RE2 (?i:...)


def _run_to_boundary(word: str, other: str, count: str) -> str:
    """Python's `[<word><other>]{count}\\b` for an RE2 pattern, `word` holding word characters and
    `other` non-word ones: all but the last character, then the last, where \\b holds either after
    a word character (end of text or a non-word character next) or after a non-word character (a
    word character next). Greedy like Python's, so the longest such run wins."""
    last = f"[{word}]{_WORD_END}"
    if other:
        last = f"(?:{last}|[{other}](?P<f>)[{_W}])"
    return f"[{word}{other}]{count}{last}"


@dataclass(frozen=True)
class Found:
    start: int  # Python's match, in characters of the scanned text
    end: int
    secret_start: int  # the secret itself (the group "v" of the Python pattern, else the match)
    secret_end: int


@dataclass(frozen=True)
class SecretPattern:
    """An RE2 pattern that finds what `python` (a Python `re` pattern) finds with `finditer`.

    Empty marker groups in `rx` say where Python's match starts (`s`; else where RE2's starts),
    where it ends (`e` or `f`; else where RE2's ends), and where the secret starts (`v`) and ends
    (`w`; else where the match ends). Without `v` the secret is the whole match."""

    label: str
    score: float
    python: str
    rx: str
    compiled: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", re2.compile(self.rx))

    def finditer(self, text: str) -> Iterator[Found]:
        data = text.encode("utf-8", "surrogatepass")
        yield from self.finditer_encoded(data, _Chars(data, text.isascii()))

    def finditer_encoded(self, data: bytes, chars: _Chars) -> Iterator[Found]:
        groups = self.compiled.groupindex
        s, e, f = groups.get("s"), groups.get("e"), groups.get("f")
        v, w = groups.get("v"), groups.get("w")
        pos = prev_end = 0
        while pos <= len(data):
            m = self.compiled.search(data, pos)
            if m is None:
                return
            start = m.start(s) if s is not None else m.start()
            if e is not None and m.start(e) >= 0:
                end = m.start(e)
            elif f is not None and m.start(f) >= 0:
                end = m.start(f)
            else:
                end = m.end()
            if start < prev_end:  # unreachable (every match is longer than one character)
                pos = prev_end
                continue
            secret_start = m.start(v) if v is not None else start
            secret_end = m.start(w) if w is not None else end
            # In this order: `chars` takes offsets that never decrease.
            char_start, char_secret_start = chars(start), chars(secret_start)
            char_secret_end, char_end = chars(secret_end), chars(end)
            yield Found(char_start, char_end, char_secret_start, char_secret_end)
            prev_end = end
            # Python resumes at the end of its match; a pattern that consumes the character
            # before a word boundary resumes one character earlier so that it can consume it.
            pos = _previous_char(data, end) if s is not None else end


def _previous_char(data: bytes, offset: int) -> int:
    offset -= 1
    while offset > 0 and 0x80 <= data[offset] < 0xC0:
        offset -= 1
    return offset


_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))


class _Chars:
    """Byte offsets in the UTF-8 text to character offsets, for offsets that never decrease."""

    def __init__(self, data: bytes, ascii_only: bool) -> None:
        self._data = data
        self._ascii = ascii_only
        self._byte = 0
        self._char = 0

    def __call__(self, offset: int) -> int:
        if self._ascii:
            return offset
        if offset < self._byte:
            self._byte = self._char = 0
        self._char += len(self._data[self._byte : offset].translate(None, _CONTINUATION_BYTES))
        self._byte = offset
        return self._char


PATTERNS: tuple[SecretPattern, ...] = (
    SecretPattern(
        "PRIVATE_KEY",
        1.0,
        r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
        r"(?:-----END (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----(?s:.)*?"
        r"(?:-----END (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)",
    ),
    SecretPattern(
        "AWS_ACCESS_KEY",
        0.95,
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b",
        rf"{_WORD_START}(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{{16}}{_WORD_END}",
    ),
    SecretPattern(
        "AWS_SECRET_KEY",
        0.95,
        r"(?i)aws.{0,20}?secret.{0,20}?[=:]\s*['\"]?(?P<v>[A-Za-z0-9/+]{40})\b",
        rf"(?i:aws.{{0,20}}?secret.{{0,20}}?)[=:][{_S}]*['\"]?(?P<v>)"
        + _run_to_boundary(rf"{_CI_LETTERS}0-9", "/+", "{39}"),
    ),
    SecretPattern(
        "GITHUB_TOKEN",
        0.99,
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        rf"{_WORD_START}(?:gh[pousr]_[A-Za-z0-9]{{36,255}}|github_pat_[A-Za-z0-9_]{{22,255}}){_WORD_END}",
    ),
    SecretPattern(
        "GITLAB_TOKEN",
        0.99,
        r"\bglpat-[A-Za-z0-9_-]{20,}\b",
        rf"{_WORD_START}glpat-" + _run_to_boundary("A-Za-z0-9_", "-", "{19,}"),
    ),
    SecretPattern(
        "SLACK_TOKEN",
        0.99,
        r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",
        rf"{_WORD_START}xox[abposr]-" + _run_to_boundary("A-Za-z0-9", "-", "{9,}"),
    ),
    SecretPattern(
        "OPENAI_KEY",
        0.9,
        r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}\b",
        rf"{_WORD_START}sk-(?:proj-|svcacct-)?" + _run_to_boundary("A-Za-z0-9_", "-", "{19,}"),
    ),
    SecretPattern(
        "ANTHROPIC_KEY",
        0.99,
        r"\bsk-ant-[A-Za-z0-9_-]{20,}\b",
        rf"{_WORD_START}sk-ant-" + _run_to_boundary("A-Za-z0-9_", "-", "{19,}"),
    ),
    SecretPattern(
        "STRIPE_KEY",
        0.99,
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}\b",
        rf"{_WORD_START}(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{{16,}}{_WORD_END}",
    ),
    SecretPattern(
        "GOOGLE_API_KEY",
        0.95,
        r"\bAIza[0-9A-Za-z_-]{35}\b",
        rf"{_WORD_START}AIza" + _run_to_boundary("0-9A-Za-z_", "-", "{34}"),
    ),
    SecretPattern(
        "HF_TOKEN",
        0.95,
        r"\bhf_[A-Za-z0-9]{30,}\b",
        rf"{_WORD_START}hf_[A-Za-z0-9]{{30,}}{_WORD_END}",
    ),
    SecretPattern(
        "JWT",
        0.9,
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",
        rf"{_WORD_START}eyJ[A-Za-z0-9_-]{{8,}}\.eyJ[A-Za-z0-9_-]{{8,}}\."
        + _run_to_boundary("A-Za-z0-9_", "-", "{7,}"),
    ),
    SecretPattern(
        "BEARER_TOKEN",
        0.8,
        r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9._~+/-]{20,}=*)",
        rf"{_WORD_START}(?i:bearer)[{_S}]+(?P<v>)[{_CI_LETTERS}0-9._~+/-]{{20,}}=*",
    ),
    SecretPattern(
        "CONNECTION_STRING",
        0.85,
        r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:(?P<v>[^\s@/]{3,})@[^\s]+",
        rf"{_WORD_START}[a-z][a-z0-9+.-]*://[^{_S}:/@]+:(?P<v>)[^{_S}@/]{{3,}}(?P<w>)@[^{_S}]+",
    ),
)
_KEYWORDS = "password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret"
# Scored by entropy, not by `score` (see SecretsRail.scan).
ASSIGNMENT = SecretPattern(
    "GENERIC_SECRET",
    0.0,
    rf"(?i)(?<![a-z])(?:{_KEYWORDS})\s*[=:]\s*['\"]?(?P<v>[^\s'\"]{{8,}})",
    # Python's (?<![a-z]) with (?i): the character before is consumed, `s` marks the match.
    rf"(?:\A|[^{_CI_LETTERS}])(?P<s>)(?i:{_KEYWORDS.replace('i', _CI_I)})"
    rf"[{_S}]*[=:][{_S}]*['\"]?(?P<v>)[^{_S}'\"]{{8,}}",
)


def shannon_entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


@dataclass
class SecretsRail:
    name: str
    threshold: float
    kind: str = "secrets"

    def scan(self, doc: Normalized) -> list[Hit]:
        hits: list[Hit] = []
        data = doc.text.encode("utf-8", "surrogatepass")
        ascii_only = doc.text.isascii()
        for pattern in PATTERNS:
            for found in pattern.finditer_encoded(data, _Chars(data, ascii_only)):
                hits.append(
                    self._hit(doc, pattern.label, pattern.score, found.secret_start, found.secret_end)
                )
        for found in ASSIGNMENT.finditer_encoded(data, _Chars(data, ascii_only)):
            value = doc.text[found.secret_start : found.secret_end]
            # Entropy separates "password=hunter2xyz!Q9" from "password = required" prose.
            entropy = shannon_entropy(value)
            score = min(1.0, entropy / 4.0)
            if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and entropy >= 3.0:
                hits.append(self._hit(doc, "GENERIC_SECRET", score, found.secret_start, found.secret_end))
        return [h for h in hits if h.score >= self.threshold]

    @staticmethod
    def _hit(doc: Normalized, label: str, score: float, start: int, end: int) -> Hit:
        o_start, o_end = doc.span_in_original(start, end)
        return Hit(category=f"secret.{label.lower()}", score=score, start=o_start, end=o_end, label=label)
