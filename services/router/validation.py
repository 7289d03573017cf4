"""What a caller may name and send: tenants, collections, document ids, texts. One rule each, used
by the gRPC adapter, the use cases and the Milvus adapter alike. No gRPC here.

Patterns use `fullmatch`: `re.match(...$)` would let a trailing newline through. Sizes are checked
before anything that walks the value, and a caller's value is never echoed whole (`quoted`): a
refusal costs little and its message stays small whatever was sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sized
from typing import Final

from services.common.errors import InvalidArgument

TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
COLLECTION_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
MAX_DOCUMENT_ID_BYTES: Final = 512  # the index's field limit, in UTF-8 bytes
QUOTE_CHARS: Final = 64  # the most of a caller's value an error message repeats
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def quoted(value: str, limit: int = QUOTE_CHARS) -> str:
    """A caller's value for an error message: its repr, cut to `limit` characters (and then its
    length), so a 200,000-character value costs a short message, not an echo."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def tenant(value: str, field: str = "tenant") -> str:
    if not TENANT_PATTERN.fullmatch(value):
        raise InvalidArgument(field, f"must match {TENANT_PATTERN.pattern}, got {quoted(value)}")
    return value


def collection(value: str, default: str = "") -> str:
    """The collection named, or `default` when the caller left it empty."""
    name = value or default
    if not COLLECTION_PATTERN.fullmatch(name):
        raise InvalidArgument(
            "collection",
            f"must match {COLLECTION_PATTERN.pattern} (a letter, then up to 62 letters, digits or _), "
            f"got {quoted(name)}",
        )
    return name


def document_id(value: str, field: str, max_chars: int) -> str:
    """A caller's document id: printable, at most `max_chars` characters, storable."""
    if len(value) <= max_chars and not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_chars or _CONTROL.search(value):
        raise InvalidArgument(field, f"must be at most {max_chars} characters without control characters")
    return stored_document_id(value, field)


def stored_document_id(value: str, field: str) -> str:
    """What the vector index can hold: any non-empty id of at most its field limit."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if utf8_length(value, field) > MAX_DOCUMENT_ID_BYTES:
        raise InvalidArgument(field, f"must be at most {MAX_DOCUMENT_ID_BYTES} bytes in UTF-8")
    return value


def text(value: str, field: str, max_chars: int) -> str:
    """Non-blank text of at most `max_chars` characters (the length first: it costs nothing)."""
    if len(value) > max_chars:
        raise InvalidArgument(field, f"must be at most {max_chars} characters, got {len(value)}")
    if not value.strip():
        raise InvalidArgument(field, "must not be empty or only whitespace")
    utf8_length(value, field)
    return value


def metadata(
    values: Mapping[str, str], field: str, max_entries: int, max_key_bytes: int, max_total_bytes: int
) -> None:
    """At most `max_entries` keys, each at most `max_key_bytes` in UTF-8, and keys and values
    together at most `max_total_bytes` in UTF-8. A string never has more characters than bytes, so
    the length in characters is checked first: a huge value is refused without encoding it."""
    if len(values) > max_entries:
        raise InvalidArgument(field, f"at most {max_entries} entries, got {len(values)}")
    total = 0
    for key, value in values.items():
        where = f"{field}[{key[:40]!r}]"  # a field path: the key's start only
        if len(key) > max_key_bytes or utf8_length(key, where) > max_key_bytes:
            raise InvalidArgument(where, f"keys must be at most {max_key_bytes} bytes in UTF-8")
        total += utf8_length(key, where)
        if total + len(value) <= max_total_bytes:  # else over in bytes too: no need to encode it
            total += utf8_length(value, where)
        else:
            total += len(value)
        if total > max_total_bytes:
            raise InvalidArgument(
                field, f"keys and values must total at most {max_total_bytes} bytes in UTF-8 per document"
            )


def count(values: Sized, field: str, maximum: int, what: str) -> None:
    """At most `maximum` items (`what` names them) in a repeated field, checked before any item is."""
    if len(values) > maximum:
        raise InvalidArgument(field, f"at most {maximum} {what} per call, got {len(values)}")


def top_k(value: int, default: int, maximum: int) -> int:
    """The caller's top_k, or `default` when unset (0)."""
    if value < 0 or value > maximum:
        raise InvalidArgument("top_k", f"must be in 0..{maximum} (0 = default {default}), got {value}")
    return value or default


def utf8_length(value: str, field: str) -> int:
    try:
        return len(value.encode())
    except UnicodeEncodeError as e:  # a lone surrogate: the index would reject the whole request
        raise InvalidArgument(field, "is not valid Unicode") from e
