"""`python -m services.gateway` = `forge serve gateway`: settings -> app -> server (what `forge up`
starts). The HTTP port comes from FORGE_GATEWAY_HTTP_HOST / FORGE_GATEWAY_HTTP_PORT."""

from __future__ import annotations

from pathlib import Path

from services.common.channels import Dialer
from services.common.config import SkuProfile
from services.common.entrypoint import ServiceEntry, serve_main
from services.gateway.app import GatewayApp
from services.gateway.settings import GatewaySettings


def build(profile: SkuProfile, home: Path, dialer: Dialer) -> GatewayApp:
    return GatewayApp(GatewaySettings(), dialer)


SERVICE = ServiceEntry("gateway", build, "FORGE_GATEWAY_* settings")

if __name__ == "__main__":
    serve_main(SERVICE)
