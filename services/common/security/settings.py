"""Security settings shared by every service and the CLI (environment: FORGE_<NAME>).

Secure by default: API keys on the router's public port, mutual TLS between services. Turning
either off is an explicit setting that each service logs as a warning at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class SecuritySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGE_", extra="ignore")

    # keys: every router call but health carries `authorization: Bearer <key>`; off: anyone may
    # call and name any tenant (a lab box with no network).
    auth: Literal["keys", "off"] = "keys"
    # The hashed keys ("" = FORGE_HOME/keys/keys.yaml); a mounted Kubernetes Secret works, since
    # the file is re-read when it changes.
    keys_file: str = ""
    # mtls: llm, embed and guardrails accept only clients holding a certificate from the private
    # CA; off: plaintext between services.
    internal_tls: Literal["mtls", "off"] = "mtls"
    tls_dir: str = ""  # "" = FORGE_HOME/tls
    # Server TLS on the router's public port (PEM files); empty = plaintext.
    public_tls_cert: str = ""
    public_tls_key: str = ""

    def keys_path(self, home: Path) -> Path:
        return Path(self.keys_file).expanduser() if self.keys_file else home / "keys" / "keys.yaml"

    def tls_path(self, home: Path) -> Path:
        return Path(self.tls_dir).expanduser() if self.tls_dir else home / "tls"


def admin_key_path(home: Path) -> Path:
    """The admin key `forge up` writes at first start; the CLI's key when FORGE_API_KEY is unset."""
    return home / "keys" / "admin.key"
