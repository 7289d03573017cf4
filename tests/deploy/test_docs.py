"""docs/operations.md answers "which isolation do I use on my box" for every profile, and its
table says what deploy/sku_profiles.yaml says (and names files that exist). docs/security.md
names settings that exist, with their real defaults, and the Secrets the manifests mount."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from services.common.security.settings import SecuritySettings
from services.common.settings import ForgeSettings
from services.embed.settings import EmbedSettings
from services.guardrails.settings import GuardrailsSettings
from services.llm.settings import LlmSettings
from services.router.settings import RouterSettings
from tests.deploy.conftest import DEPLOY, REPO, mps_profiles, profiles

DOC = REPO / "docs" / "operations.md"
SECURITY = REPO / "docs" / "security.md"
SETTINGS: tuple[type[BaseSettings], ...] = (
    RouterSettings,
    LlmSettings,
    EmbedSettings,
    GuardrailsSettings,
    SecuritySettings,
    ForgeSettings,
)


def isolation_rows() -> dict[str, list[str]]:
    text = DOC.read_text()
    section = text.split("## Which isolation do I use on my box?", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def test_every_profile_has_a_row_with_its_isolation() -> None:
    rows = isolation_rows()
    assert set(rows) == set(profiles())
    for name, profile in profiles().items():
        assert rows[name][2] == f"`{profile.isolation.value}`", name


def test_the_table_names_the_right_files() -> None:
    rows = isolation_rows()
    for name in profiles():
        compose, cluster = rows[name][3], rows[name][4]
        assert f"overlay `{name}`" in cluster
        assert (DEPLOY / "k8s" / "overlays" / name / "kustomization.yaml").is_file()
        if name == "cpu":
            assert "docker-compose.cpu.yaml" in compose
        else:
            assert f"compose/{name}.yaml" in compose
        # An MPS variant is offered exactly where one is generated.
        assert (f"compose/{name}.mps.yaml" in compose) == (name in mps_profiles()), name


@pytest.mark.parametrize("doc", [DOC, SECURITY], ids=lambda p: p.name)
def test_documented_paths_exist(doc: Path) -> None:
    for path in re.findall(r"`((?:deploy|tools|docs)/[\w./-]+)`", doc.read_text()):
        if "<" in path:
            continue
        assert (REPO / path).exists(), path


def settings_fields() -> dict[str, Any]:
    """Every environment variable a Forge settings class reads -> its default."""
    out: dict[str, Any] = {}
    for cls in SETTINGS:
        prefix = str(cls.model_config.get("env_prefix", "")).upper()
        for name, field in cls.model_fields.items():
            out[f"{prefix}{name.upper()}"] = field.default
    return out


def named_in_code() -> set[str]:
    """FORGE_* names the code or the deployment files spell out (CLI variables such as
    FORGE_API_KEY, compose variables such as FORGE_MINIO_SECRET_KEY)."""
    names: set[str] = set()
    for root in ("services", "deploy", "tools"):
        for path in (REPO / root).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ""}:
                names |= set(re.findall(r"FORGE_[A-Z0-9_]*[A-Z0-9]", path.read_text(errors="replace")))
    return names


def test_security_doc_names_real_settings() -> None:
    """Every FORGE_ variable docs/security.md mentions is read by the code (a settings field, or
    spelled out in services/, deploy/ or tools/): a renamed or imagined setting fails here."""
    text = SECURITY.read_text()
    known = set(settings_fields()) | named_in_code()
    named = set(re.findall(r"FORGE_[A-Z0-9_]*[A-Z0-9]", text))
    assert named, "docs/security.md names no settings?"
    assert not sorted(named - known)


def caps_table() -> dict[str, str]:
    section = SECURITY.read_text().split("## Hostile input", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(FORGE_\w+)` \| ([^|]+) \|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_security_doc_caps_are_the_code_defaults() -> None:
    """The hostile-input table: each row is a settings field, and its default is the code's."""
    rows = caps_table()
    assert "FORGE_ROUTER_MAX_DELETE_IDS" in rows
    fields = settings_fields()
    for name, default in rows.items():
        assert name in fields, name
        assert default.replace(",", "") == str(fields[name]), (name, default, fields[name])


def test_security_doc_names_every_secret_the_manifests_mount() -> None:
    text = SECURITY.read_text()
    manifests = "".join(p.read_text() for p in (DEPLOY / "k8s" / "base").glob("*.yaml"))
    secrets = set(re.findall(r"(?:secretName|name): (forge-(?:tls-\w+|keys|milvus-token))\b", manifests))
    assert {"forge-keys", "forge-tls-router", "forge-tls-client"} <= secrets
    for secret in secrets:
        assert secret in text, secret
