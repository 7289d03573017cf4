"""`forge ingest` and `forge ask`: small gRPC clients of the router's public API."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from forge.v1 import common_pb2, router_pb2, router_pb2_grpc

from services.common.channels import CLIENT_OPTIONS, insecure_blocking_channel
from services.common.security.access import TENANT_HEADER
from services.common.security.settings import admin_key_path

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")


class ClientError(Exception):
    """A failed call, in words: the status code and the server's message."""


def describe(err: grpc.RpcError) -> str:
    code = err.code() if isinstance(err, grpc.Call) else None
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return f"{code.name if code else 'ERROR'}: {details}"


def documents_in(paths: Sequence[Path]) -> list[Path]:
    """Files named, and text/Markdown files under folders named (sorted, so runs are repeatable)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise ClientError(f"{path}: no such file or folder")
    return found


@dataclass(frozen=True)
class Router:
    """How to reach the router: its address, the API key to present, the tenant to act for
    ("" = the key's own), and the CA that signed its certificate when its port speaks TLS."""

    address: str
    api_key: str = ""
    tenant: str = ""
    tls_ca: Path | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = []
        if self.api_key:
            pairs.append(("authorization", f"Bearer {self.api_key}"))
        if self.tenant:
            pairs.append((TENANT_HEADER, self.tenant))
        return tuple(pairs)

    def channel(self) -> grpc.Channel:
        if self.tls_ca is None:
            return insecure_blocking_channel(self.address)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.tls_ca.read_bytes())
        return grpc.secure_channel(self.address, credentials, options=CLIENT_OPTIONS)


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
    Returns (documents, chunks) once the router has flushed them."""

    def requests() -> Iterator[router_pb2.IngestRequest]:
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ClientError(f"{path}: cannot read as UTF-8 text: {exc}") from exc
            content_type = "text/markdown" if path.suffix.lower() in (".md", ".markdown") else "text/plain"
            yield router_pb2.IngestRequest(
                collection=collection,
                document=router_pb2.Document(
                    id=path.name, text=text, metadata={"source": str(path), "content_type": content_type}
                ),
            )

    documents = chunks = 0
    with router.channel() as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        try:
            for reply in stub.Ingest(requests(), metadata=router.metadata(), timeout=timeout_s):
                on_document(Ingested(reply.document_id, reply.chunk_count))
                documents, chunks = reply.documents_ingested, reply.chunks_ingested
        except grpc.RpcError as err:
            raise ClientError(describe(err)) from err
    return documents, chunks


def ask(
    router: Router,
    question: str,
    collection: str,
    top_k: int,
    max_tokens: int | None,
    on_text: Callable[[str], None],
    timeout_s: float | None = None,
) -> router_pb2.ChatSummary:
    """Stream the answer through `on_text`; return the summary (citations, usage, verdict)."""
    params = common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    request = router_pb2.ChatRequest(
        messages=[common_pb2.ChatMessage(role="user", content=question)],
        collection=collection,
        top_k=top_k,
        params=params,
    )
    summary = router_pb2.ChatSummary()
    with router.channel() as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        try:
            for reply in stub.Chat(request, metadata=router.metadata(), timeout=timeout_s):
                if reply.HasField("summary"):
                    summary = reply.summary
                else:
                    on_text(reply.delta)
        except grpc.RpcError as err:
            raise ClientError(describe(err)) from err
    return summary
