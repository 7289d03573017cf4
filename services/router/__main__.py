"""`python -m services.router` = `forge serve router`: settings -> app -> server (what `forge up`
starts)."""

from __future__ import annotations

from pathlib import Path

from services.common.channels import Dialer
from services.common.config import SkuProfile
from services.common.entrypoint import ServiceEntry, serve_main
from services.router.app import RouterApp
from services.router.settings import RouterSettings


def build(profile: SkuProfile, home: Path, dialer: Dialer) -> RouterApp:
    return RouterApp(profile, home, RouterSettings(), dialer)


SERVICE = ServiceEntry("router", build, "FORGE_ROUTER_* settings")

if __name__ == "__main__":
    serve_main(SERVICE)
