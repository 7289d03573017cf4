"""What a caller may name and send: tenants, collections, document ids, texts. One rule each, used
by the gRPC adapter, the use cases and the Milvus adapter alike. No gRPC here.

Patterns use `fullmatch`: `re.match(...$)` would let a trailing newline through.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from services.common.errors import InvalidArgument

TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
COLLECTION_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
MAX_DOCUMENT_ID_BYTES: Final = 512  # the index's field limit, in UTF-8 bytes
MAX_METADATA_ENTRIES: Final = 32
MAX_METADATA_CHARS: Final = 1024
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def tenant(value: str, field: str = "tenant") -> str:
    if not TENANT_PATTERN.fullmatch(value):
        raise InvalidArgument(field, f"must match {TENANT_PATTERN.pattern}, got {value[:64]!r}")
    return value


def collection(value: str, default: str = "") -> str:
    """The collection named, or `default` when the caller left it empty."""
    name = value or default
    if not COLLECTION_PATTERN.fullmatch(name):
        raise InvalidArgument(
            "collection",
            f"must match {COLLECTION_PATTERN.pattern} (a letter, then up to 62 letters, digits or _), "
            f"got {name[:80]!r}",
        )
    return name


def document_id(value: str, field: str, max_chars: int) -> str:
    """A caller's document id: printable, at most `max_chars` characters, storable."""
    if not value.strip():
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
    """Non-blank text of at most `max_chars` characters."""
    if not value.strip():
        raise InvalidArgument(field, "must not be empty or only whitespace")
    if len(value) > max_chars:
        raise InvalidArgument(field, f"must be at most {max_chars} characters, got {len(value)}")
    utf8_length(value, field)
    return value


def metadata(values: Mapping[str, str], field: str) -> None:
    if len(values) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(field, f"at most {MAX_METADATA_ENTRIES} entries, got {len(values)}")
    for key, value in values.items():
        if len(key) + len(value) > MAX_METADATA_CHARS:
            raise InvalidArgument(
                f"{field}[{key[:40]}]", f"key and value must total at most {MAX_METADATA_CHARS} characters"
            )


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
