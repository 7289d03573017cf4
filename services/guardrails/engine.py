"""The guardrails domain core: validate a request, normalise the text, run the stage's rails
concurrently (each in a worker thread under its own timeout), and combine their hits into one
verdict. Nothing here knows about gRPC."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument, Unavailable
from services.guardrails import metrics
from services.guardrails.normalize import Normalized, normalize
from services.guardrails.policy import Action, OnFailure, Policy, Stage
from services.guardrails.rails.base import Hit, Rail
from services.guardrails.redact import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    rail: str
    category: str
    score: float
    start: int
    end: int
    action: Action


@dataclass(frozen=True)
class RailTiming:
    rail: str
    seconds: float
    failed: bool
    reason: str = ""  # "timeout" or the exception type when failed


@dataclass(frozen=True)
class Verdict:
    decision: Action | None  # None = allow
    findings: list[Finding]
    redacted_text: str
    timings: list[RailTiming]
    policy_version: str

    @property
    def allowed(self) -> bool:
        return self.decision in (None, Action.FLAG)


@dataclass
class _Outcome:
    hits: list[Hit] = field(default_factory=list)
    timing: RailTiming | None = None


def validate(text: str, stage: Stage | None, max_chars: int) -> Stage:
    if stage is None:
        raise InvalidArgument("stage", "must be STAGE_INPUT, STAGE_RETRIEVAL or STAGE_OUTPUT")
    if not text.strip():
        raise InvalidArgument(
            "text", f"must not be empty or only whitespace (limit 1 to {max_chars} characters)"
        )
    if len(text) > max_chars:
        raise InvalidArgument("text", f"must be at most {max_chars} characters, got {len(text)}")
    return stage


class Guard:
    def __init__(self, policy: Policy, rails: Mapping[str, Rail]) -> None:
        missing = [name for name in policy.used_rails() if name not in rails]
        if missing:
            raise ValueError(f"rails named by the policy but not built: {missing}")
        self.policy = policy
        self.rails = dict(rails)

    async def check(self, text: str, stage: Stage | None) -> Verdict:
        stage = validate(text, stage, self.policy.max_chars)
        doc = await asyncio.to_thread(normalize, text)
        names = self.policy.rails_for(stage)
        outcomes = await asyncio.gather(*(self._run(name, doc) for name in names))
        verdict = self._combine(text, names, outcomes)
        metrics.CHECKS.labels(stage.value, verdict.decision.value if verdict.decision else "allow").inc()
        return verdict

    async def _run(self, name: str, doc: Normalized) -> _Outcome:
        config = self.policy.rails[name]
        rail = self.rails[name]
        started = time.perf_counter()
        try:
            hits = await asyncio.wait_for(asyncio.to_thread(rail.scan, doc), config.timeout_ms / 1000)
        except TimeoutError:
            return self._failed(name, started, "timeout")
        except Unavailable:
            raise
        except Exception as exc:
            log.exception("rail %s failed", name)
            return self._failed(name, started, type(exc).__name__)
        elapsed = time.perf_counter() - started
        metrics.RAIL_SECONDS.labels(name).observe(elapsed)
        return _Outcome(hits, RailTiming(name, elapsed, failed=False))

    def _failed(self, name: str, started: float, reason: str) -> _Outcome:
        config = self.policy.rails[name]
        metrics.RAIL_FAILURES.labels(name, reason, config.on_failure.value).inc()
        return _Outcome([], RailTiming(name, time.perf_counter() - started, failed=True, reason=reason))

    def _combine(self, text: str, names: list[str], outcomes: list[_Outcome]) -> Verdict:
        findings: list[Finding] = []
        to_redact: list[Hit] = []
        actions: set[Action] = set()
        timings: list[RailTiming] = []
        for name, outcome in zip(names, outcomes, strict=True):
            config = self.policy.rails[name]
            assert outcome.timing is not None
            timings.append(outcome.timing)
            if outcome.timing.failed:
                if config.on_failure is OnFailure.CLOSED:
                    actions.add(Action.BLOCK)
                    findings.append(Finding(name, "rail_failed", 1.0, 0, len(text), Action.BLOCK))
                continue
            for hit in outcome.hits:
                findings.append(Finding(name, hit.category, hit.score, hit.start, hit.end, config.action))
                metrics.FINDINGS.labels(name, hit.category).inc()
                actions.add(config.action)
                if config.action is Action.REDACT:
                    to_redact.append(hit)
        decision = next((a for a in (Action.BLOCK, Action.REDACT, Action.FLAG) if a in actions), None)
        redacted = redact(text, to_redact) if to_redact else text
        return Verdict(decision, findings, redacted, timings, self.policy.version)
