"""Gateway settings (environment: FORGE_GATEWAY_<NAME>)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_HTTP_PORTS


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGE_GATEWAY_", extra="forbid")

    # Where the OpenAI-compatible HTTP API listens (0 = any free port; the process announces it).
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = DEFAULT_HTTP_PORTS["gateway"]
    # The router's public port: every call carries the caller's API key, the router decides.
    router_address: str = f"127.0.0.1:{DEFAULT_GRPC_PORTS['router']}"
    # CA certificate of a router that serves TLS (`forge up --tls`); empty = plaintext.
    router_ca: str = ""
    # /v1/embeddings and /v1/models reach these over the mesh's mutual TLS, once the router has
    # accepted the caller's key (the router has no embedding or model-listing RPC).
    embed_address: str = f"127.0.0.1:{DEFAULT_GRPC_PORTS['embed']}"
    llm_address: str = f"127.0.0.1:{DEFAULT_GRPC_PORTS['llm']}"
    # The gRPC deadline of a chat (the router splits it over its stages) and of every other call.
    chat_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    call_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    # A request body larger than this is refused with 413 before it is parsed.
    max_body_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    # HTTP requests carried at once (a stream until its last byte); more are answered 503 with
    # Retry-After in OpenAI's error shape (request_cap.py).
    max_requests: Annotated[int, Field(ge=1)] = 512
    # Seconds streams in flight get to finish once the process drains.
    drain_grace_s: Annotated[float, Field(ge=0)] = 10.0
