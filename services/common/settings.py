"""Process-wide settings shared by every Forge command: FORGE_HOME, the SKU profile, ports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Local defaults (DESIGN.md): gRPC port and Prometheus port per service.
DEFAULT_GRPC_PORTS = {"router": 50051, "llm": 50052, "embed": 50053, "guardrails": 50054, "gateway": 50055}
DEFAULT_MAX_CONCURRENT_RPCS = 512
DEFAULT_METRICS_PORTS = {"router": 9101, "llm": 9102, "embed": 9103, "guardrails": 9104, "gateway": 9105}
# HTTP APIs beside the gRPC port: the gateway's OpenAI-compatible front.
DEFAULT_HTTP_PORTS = {"gateway": 8080}


class ForgeSettings(BaseSettings):
    """FORGE_HOME (model caches, Milvus Lite data), FORGE_PROFILE (SKU profile, default cpu)."""

    model_config = SettingsConfigDict(env_prefix="FORGE_", extra="ignore")

    home: Path = Path("~/.forge")
    profile: str = "cpu"
    log_level: str = "INFO"
    # Calls one server runs at once; gRPC refuses more with RESOURCE_EXHAUSTED before any handler
    # runs. Far above what admission lets through (sessions, the embed queue), so it only bites a
    # flood: streams that hold a connection slot each, or a client opening calls without end.
    max_concurrent_rpcs: Annotated[int, Field(ge=1)] = DEFAULT_MAX_CONCURRENT_RPCS

    def home_dir(self) -> Path:
        path = self.home.expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
