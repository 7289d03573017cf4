"""`forge ingest` and `forge ask`: the CLI's words over the `forge_client` SDK."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import forge_client
from forge_client import ChatSummary, ForgeError
from services.common.security.settings import admin_key_path


class ClientError(Exception):
    """A failed call, in words: the status code and the server's message."""


def documents_in(paths: Sequence[Path]) -> list[Path]:
    """Files named, and text/Markdown files under folders named (sorted, so runs are repeatable)."""
    try:
        return forge_client.find_files(paths)
    except FileNotFoundError as exc:
        raise ClientError(str(exc)) from exc


@dataclass(frozen=True)
class Router:
    """How to reach the router: its address, the API key to present, the tenant to act for
    ("" = the key's own), and the CA that signed its certificate when its port speaks TLS."""

    address: str
    api_key: str = ""
    tenant: str = ""
    tls_ca: Path | None = None

    def client(self) -> forge_client.Client:
        # No deadline, as before the SDK: a large folder may take longer than any default.
        return forge_client.Client(
            self.address,
            api_key=self.api_key,
            tenant=self.tenant or None,
            tls=self.tls_ca if self.tls_ca is not None else False,
            timeout=None,
        )


def api_key(home: Path) -> str:
    """FORGE_API_KEY, else the admin key `forge up` wrote under FORGE_HOME; "" when neither."""
    if key := os.environ.get("FORGE_API_KEY", "").strip():
        return key
    try:
        return admin_key_path(home).read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Ingested:
    document_id: str
    chunk_count: int


def ingest(
    router: Router,
    files: Sequence[Path],
    collection: str,
    on_document: Callable[[Ingested], None],
    timeout_s: float | None = None,
) -> tuple[int, int]:
    """Stream the files (one document each, id = file name) and report each stored document.
    Returns (documents, chunks) once the router has stored them."""
    try:
        with router.client() as client:
            result = client.ingest(
                (forge_client.document_from_file(f) for f in files),
                collection=collection,
                on_progress=lambda p: on_document(Ingested(p.document_id, p.chunk_count)),
                timeout=timeout_s,
            )
    except (ForgeError, ValueError) as exc:
        raise ClientError(str(exc)) from exc
    return result.documents, result.chunks


def ask(
    router: Router,
    question: str,
    collection: str,
    top_k: int,
    max_tokens: int | None,
    on_text: Callable[[str], None],
    timeout_s: float | None = None,
) -> ChatSummary:
    """Stream the answer through `on_text`; return the summary (sources, model, usage, verdict)."""
    try:
        with (
            router.client() as client,
            client.chat(
                question,
                collection=collection,
                top_k=top_k,
                max_tokens=max_tokens,
                timeout=timeout_s,
            ) as stream,
        ):
            for delta in stream:
                on_text(delta.text)
            summary = stream.summary
    except ForgeError as exc:
        raise ClientError(str(exc)) from exc
    return summary
