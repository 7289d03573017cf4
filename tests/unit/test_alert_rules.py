"""deploy/prometheus/forge-alerts.yaml: the four alerts exist, watch metrics Forge really exports,
and (where promtool is installed) pass `promtool check rules`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import NotRequired, TypedDict

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "forge-alerts.yaml"


# A Prometheus alerting rule as the file spells it ("for" is a keyword, hence this form).
Rule = TypedDict(
    "Rule",
    {
        "alert": str,
        "expr": str,
        "for": NotRequired[str],
        "labels": dict[str, str],
        "annotations": dict[str, str],
    },
)


def alerts() -> dict[str, Rule]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def exported_names() -> str:
    return "\n".join(p.read_text() for p in (REPO / "services").rglob("*.py"))


def test_the_four_alerts_watch_what_the_brief_asks() -> None:
    rules = alerts()
    assert set(rules) == {
        "ForgeServiceOverGpuSlice",
        "ForgeSessionsSaturated",
        "ForgeRejectionsHigh",
        "ForgeServiceDown",
    }
    assert "forge_gpu_memory_over_slice" in str(rules["ForgeServiceOverGpuSlice"]["expr"])
    saturated = " ".join(str(rules["ForgeSessionsSaturated"]["expr"]).split())
    assert "forge_router_sessions_active" in saturated and "forge_router_sessions_max" in saturated
    assert saturated.endswith(">= 1") and rules["ForgeSessionsSaturated"]["for"] == "5m"
    assert "rate(forge_router_rejected_total[5m])" in str(rules["ForgeRejectionsHigh"]["expr"])
    assert str(rules["ForgeRejectionsHigh"]["expr"]).endswith("> 1")
    assert rules["ForgeServiceDown"]["expr"] == "up == 0"
    for rule in rules.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_every_forge_metric_in_the_rules_is_exported_by_a_service() -> None:
    source = exported_names()
    for name, rule in alerts().items():
        for metric in re.findall(r"\bforge_[a-z_]+", str(rule["expr"])):
            base = metric.removesuffix("_total")  # prometheus_client adds _total to counters
            assert f'"{metric}"' in source or f'"{base}"' in source, f"{name}: {metric} is not exported"


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: the prometheus package)")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
