"""Grounded redaction: an entity a redacting rail finds in the checked text is kept when the
request's grounding holds it too (the tenant's own retrieved chunks, the caller's own messages):
repeating what the caller sent or may read anyway discloses nothing, and redacting it broke
answers ("the on-call technician is <PERSON>"). Matching ignores case, spaces and punctuation,
so "555 0134" in an answer matches "555-0134" in a runbook."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from services.common.errors import InvalidArgument

MAX_GROUNDING_TEXTS = 64
MAX_GROUNDING_CHARS = 262_144
# Shorter keys ("Al", "12") match by chance anywhere.
MIN_KEY_CHARS = 3

_NOT_ALNUM = re.compile(r"[\W_]+")


@dataclass(frozen=True)
class GroundingText:
    source: str
    text: str


def _key(text: str) -> str:
    return _NOT_ALNUM.sub("", text.casefold())


def validate_grounding(grounding: Sequence[GroundingText]) -> None:
    if len(grounding) > MAX_GROUNDING_TEXTS:
        raise InvalidArgument(
            "grounding", f"must hold at most {MAX_GROUNDING_TEXTS} texts, got {len(grounding)}"
        )
    total = sum(len(g.text) for g in grounding)
    if total > MAX_GROUNDING_CHARS:
        raise InvalidArgument(
            "grounding", f"must hold at most {MAX_GROUNDING_CHARS} characters in all, got {total}"
        )


@dataclass(frozen=True)
class Grounding:
    texts: Sequence[GroundingText] = ()

    @cached_property
    def _keys(self) -> list[tuple[str, str]]:  # built on first use: most checks redact nothing
        return [(g.source, _key(g.text)) for g in self.texts]

    def source_of(self, entity: str) -> str | None:
        """The source of the first grounding text that holds `entity`, or None."""
        key = _key(entity)
        if len(key) < MIN_KEY_CHARS:
            return None
        for source, text in self._keys:
            if key in text:
                return source
        return None
