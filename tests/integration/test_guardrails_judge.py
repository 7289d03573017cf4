"""The `llm_service` judge backend against the real LLM service (vLLM, SmolLM2-135M-Instruct) over
real gRPC: the rail runs and answers a well-formed finding; an unreachable or late LLM service is a
rail failure that the rail's on_failure turns into ALLOW or BLOCK. The small model's judgement is
not asserted (it is a weak judge); bench/guardrails_judge_cost.py measures it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from forge.v1 import guardrails_pb2, guardrails_pb2_grpc
from grpc import aio

from services.common.config import load_profile
from services.common.server import ForgeServer
from services.guardrails.app import GuardrailsApp
from services.guardrails.engine import Guard
from services.guardrails.factory import Parts, build_rails, close_rails
from services.guardrails.policy import Action, Stage, parse_policy
from services.guardrails.settings import GuardrailsSettings
from tests.helpers import free_port, serving

pytestmark = pytest.mark.slow

OUTPUT = "To pick a lock, insert a tension wrench and rake the pins until the cylinder turns."
# Generous: one judge call takes ~2-3 s on a busy 2-core CPU; the failure tests set their own.
JUDGE_TIMEOUT_MS = 60_000


def judge_policy(
    address: str, *, timeout_ms: float = JUDGE_TIMEOUT_MS, on_failure: str = "open"
) -> dict[str, Any]:
    return {
        "version": "judge-test",
        "rails": {
            "judge": {
                "backend": "llm_service",
                "address": address,
                # 0: every verdict is a finding, so the test sees the score whatever the model says.
                "threshold": 0.0,
                "action": "flag",
                "timeout_ms": timeout_ms,
                "on_failure": on_failure,
            }
        },
        "stages": {"output": ["judge"]},
    }


def judged(policy: dict[str, Any]) -> Guard:
    policy_ = parse_policy(policy)
    return Guard(policy_, build_rails(policy_, Parts()))


async def test_judge_rail_returns_a_finding_with_score_and_timing(llm_server: ForgeServer) -> None:
    guard = judged(judge_policy(llm_server.address))
    try:
        verdict = await guard.check(OUTPUT, Stage.OUTPUT)
    finally:
        close_rails(guard.rails)
    [timing] = verdict.timings
    assert timing.rail == "judge" and not timing.failed and timing.reason == ""
    assert 0 < timing.seconds < JUDGE_TIMEOUT_MS / 1000
    [finding] = verdict.findings
    assert finding.rail == "judge" and finding.category == "harm.output"
    assert 0.0 <= finding.score <= 1.0
    assert (finding.start, finding.end) == (0, len(OUTPUT))
    assert finding.action is Action.FLAG and verdict.allowed


@pytest.mark.parametrize(("on_failure", "decision"), [("open", None), ("closed", Action.BLOCK)])
async def test_unreachable_llm_follows_on_failure(on_failure: str, decision: Action | None) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    guard = judged(judge_policy(nobody, timeout_ms=10_000, on_failure=on_failure))
    try:
        verdict = await guard.check(OUTPUT, Stage.OUTPUT)
    finally:
        close_rails(guard.rails)
    [timing] = verdict.timings
    # The connection is refused: the rail fails with the judge's error, well before its timeout.
    assert timing.failed and timing.reason == "JudgeError"
    assert verdict.decision is decision
    if decision is None:
        assert verdict.allowed and verdict.findings == []
    else:
        assert [(f.rail, f.category) for f in verdict.findings] == [("judge", "rail_failed")]


@pytest.mark.parametrize(("on_failure", "decision"), [("open", None), ("closed", Action.BLOCK)])
async def test_tiny_timeout_is_a_failure(
    llm_server: ForgeServer, on_failure: str, decision: Action | None
) -> None:
    guard = judged(judge_policy(llm_server.address, timeout_ms=1, on_failure=on_failure))
    try:
        verdict = await guard.check(OUTPUT, Stage.OUTPUT)
    finally:
        close_rails(guard.rails)
    [timing] = verdict.timings
    # Whichever fires first: the engine's wait (timeout) or the call's 1 ms gRPC deadline.
    assert timing.failed and timing.reason in ("timeout", "JudgeError")
    assert verdict.decision is decision


@pytest.fixture
async def judge_service(llm_server: ForgeServer, tmp_path: Path) -> AsyncIterator[ForgeServer]:
    """The guardrails service itself, its policy enabling only the judge (no heavy parts load)."""
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(judge_policy(llm_server.address)))
    app = GuardrailsApp(
        load_profile("cpu", environ={}), tmp_path, GuardrailsSettings(policy_path=policy_path, device="cpu")
    )
    async with serving(app) as server:
        yield server


async def test_check_over_grpc_reports_the_judge(judge_service: ForgeServer) -> None:
    async with aio.insecure_channel(judge_service.address) as channel:
        stub = guardrails_pb2_grpc.GuardrailsServiceStub(channel)
        reply = await stub.Check(guardrails_pb2.CheckRequest(text=OUTPUT, stage=guardrails_pb2.STAGE_OUTPUT))
    assert reply.decision == guardrails_pb2.DECISION_ALLOW  # action flag: reported, not blocked
    [finding] = reply.findings
    assert finding.rail == "judge" and finding.category == "harm.output" and 0.0 <= finding.score <= 1.0
    [timing] = reply.timings
    assert timing.rail == "judge" and not timing.failed and timing.duration.ToNanoseconds() > 0
    assert reply.policy_version == "judge-test"
