"""Guardrails service settings (environment: FORGE_GUARDRAILS_<NAME>)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class GuardrailsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGE_GUARDRAILS_", extra="forbid")

    # The policy YAML; unset = deploy/guardrails_policy.yaml.
    policy_path: Path | None = None
    # auto = CUDA when the profile gives guardrails a GPU slice and CUDA is present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Train the classifier heads at start when the cache under FORGE_HOME has none.
    train_if_missing: bool = True
