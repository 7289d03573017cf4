from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.guardrails.policy import Action, OnFailure, PolicyError, Stage, load_policy, parse_policy


def _policy(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": "t1",
        "rails": {"secrets": {"action": "redact"}},
        "stages": {"input": ["secrets"]},
    }
    data.update(overrides)
    return data


def test_default_policy_is_valid() -> None:
    policy = load_policy()
    assert policy.rails_for(Stage.INPUT)
    assert policy.rails["injection"].action is Action.BLOCK
    assert policy.kind_of("injection_retrieval") == "injection"


def test_unknown_rail_kind_is_a_startup_error() -> None:
    with pytest.raises(PolicyError, match=r"rails\.toxicity: unknown rail kind 'toxicity'"):
        parse_policy(_policy(rails={"toxicity": {}}, stages={"input": ["toxicity"]}))


def test_stage_naming_an_undefined_rail_is_an_error() -> None:
    with pytest.raises(PolicyError, match=r"stages\.input: unknown rail 'injecton'"):
        parse_policy(_policy(stages={"input": ["secrets", "injecton"]}))


def test_unknown_stage_bad_action_and_bad_threshold_are_errors() -> None:
    with pytest.raises(PolicyError, match="stages"):
        parse_policy(_policy(stages={"inptu": ["secrets"]}))
    with pytest.raises(PolicyError, match="action"):
        parse_policy(_policy(rails={"secrets": {"action": "quarantine"}}))
    with pytest.raises(PolicyError, match="threshold"):
        parse_policy(_policy(rails={"secrets": {"threshold": 1.5}}))
    with pytest.raises(PolicyError, match="timeout_ms"):
        parse_policy(_policy(rails={"secrets": {"timeout_ms": 0}}))


def test_kind_specific_settings_are_required() -> None:
    with pytest.raises(PolicyError, match="needs at least one phrase"):
        parse_policy(_policy(rails={"p": {"kind": "phrases"}}, stages={"output": ["p"]}))
    with pytest.raises(PolicyError, match="needs denied_topics or allowed_topics"):
        parse_policy(_policy(rails={"t": {"kind": "topics"}}, stages={"input": ["t"]}))


def test_unreadable_or_invalid_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)


def test_defaults_are_flag_and_fail_open() -> None:
    policy = parse_policy(_policy(rails={"secrets": {}}))
    assert policy.rails["secrets"].action is Action.FLAG
    assert policy.rails["secrets"].on_failure is OnFailure.OPEN


def test_default_policy_keeps_the_judge_off() -> None:
    policy = load_policy()
    assert "judge" not in {policy.kind_of(name) for name in policy.used_rails()}


def test_judge_settings_are_validated() -> None:
    judge = {"kind": "judge", "backend": "llm_service"}
    with pytest.raises(PolicyError, match="max_tokens"):
        parse_policy(_policy(rails={"j": {**judge, "max_tokens": 0}}, stages={"output": ["j"]}))
    with pytest.raises(PolicyError, match="a judge rail needs a backend"):
        parse_policy(_policy(rails={"j": {"kind": "judge"}}, stages={"output": ["j"]}))
