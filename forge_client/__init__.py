"""Forge's Python client SDK: typed sync and asyncio clients of the router's public API.

    from forge_client import Client

    with Client(api_key="fk_...") as forge:
        forge.ingest_paths(["docs/"])
        stream = forge.chat("What does the runbook say about restarts?")
        for delta in stream:
            print(delta.text, end="")
        print([c.document_id for c in stream.summary.citations])

It imports only grpc, google.protobuf/google.rpc, the generated `forge.v1` stubs and the standard
library, so it ships apart from the services. See docs/sdk.md.
"""

from forge_client._connection import DEFAULT_ADDRESS, local_admin_key
from forge_client.aio import AsyncChatStream, AsyncClient
from forge_client.client import ChatStream, Client
from forge_client.documents import document_from_file, find_files
from forge_client.errors import (
    Cancelled,
    DeadlineExceeded,
    ForgeError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from forge_client.retry import NO_RETRY, RetryPolicy
from forge_client.types import (
    Capacity,
    ChatDelta,
    ChatSummary,
    Citation,
    Collection,
    DeleteResult,
    Dependency,
    Document,
    Finding,
    FinishReason,
    GpuDevice,
    GpuProcess,
    GpuStats,
    IngestProgress,
    IngestResult,
    Message,
    Priority,
    SearchHit,
    SearchResult,
    ServerInfo,
    ServiceGpuUsage,
    TenantUsage,
    Usage,
    Verdict,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "NO_RETRY",
    "AsyncChatStream",
    "AsyncClient",
    "Cancelled",
    "Capacity",
    "ChatDelta",
    "ChatStream",
    "ChatSummary",
    "Citation",
    "Client",
    "Collection",
    "DeadlineExceeded",
    "DeleteResult",
    "Dependency",
    "Document",
    "Finding",
    "FinishReason",
    "ForgeError",
    "GpuDevice",
    "GpuProcess",
    "GpuStats",
    "IngestProgress",
    "IngestResult",
    "Internal",
    "InvalidArgument",
    "Message",
    "NotFound",
    "PermissionDenied",
    "Priority",
    "ResourceExhausted",
    "RetryPolicy",
    "SearchHit",
    "SearchResult",
    "ServerInfo",
    "ServiceGpuUsage",
    "TenantUsage",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "Verdict",
    "document_from_file",
    "find_files",
    "local_admin_key",
]
