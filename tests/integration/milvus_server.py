"""A real Milvus server for integration tests: services/cli/milvus_server.py (what `forge up
--routers N` runs), with its virtualenv in the checkout's .cache/, built once per clone and shared
by every test (and by the e2e test of `forge up --routers N`, through FORGE_MILVUS_SERVER_VENV).
Each server gets a fresh data directory and free loopback ports."""

from __future__ import annotations

from pathlib import Path

from services.cli import milvus_server as _server
from services.cli.milvus_server import (
    PACKAGE,
    MilvusServer,
    MilvusUnavailable,
    ServerVenvUnavailable,
    start_server,
    why_not_answering,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".cache" / _server.VENV_NAME

__all__ = [
    "PACKAGE",
    "VENV",
    "MilvusServer",
    "MilvusUnavailable",
    "ServerVenvUnavailable",
    "ensure_server_venv",
    "start_server",
    "why_not_answering",
]


def ensure_server_venv(timeout_s: float = 600) -> Path:
    """The `milvus-server` executable, installing the wheel into VENV the first time."""
    return _server.ensure_server_venv(VENV, timeout_s)
