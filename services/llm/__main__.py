"""`python -m services.llm` = `forge serve llm`: settings -> app -> server (what `forge up` starts)."""

from __future__ import annotations

from pathlib import Path

from services.common.channels import Dialer
from services.common.config import SkuProfile
from services.common.entrypoint import ServiceEntry, serve_main
from services.llm.app import LlmApp
from services.llm.settings import LlmSettings


def build(profile: SkuProfile, home: Path, dialer: Dialer) -> LlmApp:
    return LlmApp(profile, home, LlmSettings())


SERVICE = ServiceEntry("llm", build, "FORGE_LLM_* settings")

if __name__ == "__main__":
    serve_main(SERVICE)
