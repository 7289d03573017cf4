"""`forge ingest` and `forge ask`: small gRPC clients of the router's public API."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from forge.v1 import common_pb2, router_pb2, router_pb2_grpc

from services.common.channels import insecure_blocking_channel

TENANT_HEADER = "x-forge-tenant"
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
class Ingested:
    document_id: str
    chunk_count: int


def ingest(
    address: str,
    files: Sequence[Path],
    tenant: str,
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
    with insecure_blocking_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        try:
            for reply in stub.Ingest(requests(), metadata=((TENANT_HEADER, tenant),), timeout=timeout_s):
                on_document(Ingested(reply.document_id, reply.chunk_count))
                documents, chunks = reply.documents_ingested, reply.chunks_ingested
        except grpc.RpcError as err:
            raise ClientError(describe(err)) from err
    return documents, chunks


def ask(
    address: str,
    question: str,
    tenant: str,
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
    with insecure_blocking_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        try:
            for reply in stub.Chat(request, metadata=((TENANT_HEADER, tenant),), timeout=timeout_s):
                if reply.HasField("summary"):
                    summary = reply.summary
                else:
                    on_text(reply.delta)
        except grpc.RpcError as err:
            raise ClientError(describe(err)) from err
    return summary
