"""`python -m services.guardrails` = `forge serve guardrails`: settings -> app -> server (what
`forge up` starts)."""

from __future__ import annotations

from pathlib import Path

from services.common.channels import Dialer
from services.common.config import SkuProfile
from services.common.entrypoint import ServiceEntry, serve_main
from services.guardrails.app import GuardrailsApp
from services.guardrails.settings import GuardrailsSettings


def build(profile: SkuProfile, home: Path, dialer: Dialer) -> GuardrailsApp:
    return GuardrailsApp(profile, home, GuardrailsSettings(), dialer)


SERVICE = ServiceEntry("guardrails", build, "FORGE_GUARDRAILS_* settings or guardrails policy")

if __name__ == "__main__":
    serve_main(SERVICE)
