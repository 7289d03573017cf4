"""`python -m services.embed` = `forge serve embed`: settings -> app -> server (what `forge up` starts)."""

from __future__ import annotations

from pathlib import Path

from services.common.channels import Dialer
from services.common.config import SkuProfile
from services.common.entrypoint import ServiceEntry, serve_main
from services.embed.app import EmbedApp
from services.embed.settings import EmbedSettings


def build(profile: SkuProfile, home: Path, dialer: Dialer) -> EmbedApp:
    return EmbedApp(profile, EmbedSettings())


SERVICE = ServiceEntry("embed", build, "FORGE_EMBED_* settings")

if __name__ == "__main__":
    serve_main(SERVICE)
