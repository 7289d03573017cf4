"""The guardrails domain core: validate a request, normalise the text, run the stage's rails
concurrently (each in a worker thread under its own timeout), and combine their hits into one
verdict. Nothing here knows about gRPC.

Tracing: a check is a span "guardrails.check" (stage, decision, findings) with one child span per
rail, "guardrails.rail.<name>" (its decision: allow, or the policy's action when it hit; hits,
top score; failed and why)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span

from services.common.errors import InvalidArgument, Unavailable
from services.guardrails import metrics
from services.guardrails.normalize import Normalized, normalize
from services.guardrails.policy import Action, OnFailure, Policy, Stage
from services.guardrails.rails.base import Hit, Rail
from services.guardrails.redact import redact

log = logging.getLogger(__name__)
tracer = trace.get_tracer("forge.guardrails")


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
    def __init__(self, policy: Policy, rails: Mapping[str, Rail], executor: Executor | None = None) -> None:
        """`executor` runs the rails' scans (None: the loop's default thread pool)."""
        missing = [name for name in policy.used_rails() if name not in rails]
        if missing:
            raise ValueError(f"rails named by the policy but not built: {missing}")
        self.policy = policy
        self.rails = dict(rails)
        self._executor = executor

    async def check(self, text: str, stage: Stage | None) -> Verdict:
        with tracer.start_as_current_span("guardrails.check") as span:
            stage = validate(text, stage, self.policy.max_chars)
            span.set_attributes({"forge.stage": stage.value, "forge.text_chars": len(text)})
            doc = await asyncio.to_thread(normalize, text)
            names = self.policy.rails_for(stage)
            outcomes = await asyncio.gather(*(self._run(name, stage, doc) for name in names))
            verdict = self._combine(text, names, outcomes)
            decision = verdict.decision.value if verdict.decision else "allow"
            span.set_attributes(
                {
                    "forge.decision": decision,
                    "forge.findings": len(verdict.findings),
                    "forge.rails": names,
                    "forge.policy_version": verdict.policy_version,
                }
            )
            metrics.CHECKS.labels(stage.value, decision).inc()
            return verdict

    async def _run(self, name: str, stage: Stage, doc: Normalized) -> _Outcome:
        config = self.policy.rails[name]
        rail = self.rails[name]
        # Current in the worker thread too (to_thread copies the context): a rail that calls
        # another service (the judge) continues this trace.
        with tracer.start_as_current_span(
            f"guardrails.rail.{name}",
            attributes={
                "forge.rail": name,
                "forge.rail.kind": self.policy.kind_of(name),
                "forge.stage": stage.value,
            },
        ) as span:
            started = time.perf_counter()
            try:
                hits = await _scan(rail, doc, config.timeout_ms / 1000, self._executor)
            except TimeoutError:
                return self._failed(name, started, "timeout", span)
            except Unavailable:
                raise
            except Exception as exc:
                log.exception("rail %s failed", name)
                return self._failed(name, started, type(exc).__name__, span)
            elapsed = time.perf_counter() - started
            metrics.RAIL_SECONDS.labels(name).observe(elapsed)
            span.set_attributes(
                {
                    "forge.rail.decision": config.action.value if hits else "allow",
                    "forge.rail.hits": len(hits),
                    "forge.rail.score": max((h.score for h in hits), default=0.0),
                    "forge.rail.categories": sorted({h.category for h in hits}),
                }
            )
            return _Outcome(hits, RailTiming(name, elapsed, failed=False))

    def _failed(self, name: str, started: float, reason: str, span: Span) -> _Outcome:
        config = self.policy.rails[name]
        metrics.RAIL_FAILURES.labels(name, reason, config.on_failure.value).inc()
        # A failed rail blocks (on_failure closed) or is ignored (open): that is its decision.
        decision = Action.BLOCK.value if config.on_failure is OnFailure.CLOSED else "allow"
        span.set_attributes(
            {
                "forge.rail.decision": decision,
                "forge.rail.failed": True,
                "forge.rail.failure": reason,
                "forge.rail.on_failure": config.on_failure.value,
            }
        )
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


async def _scan(rail: Rail, doc: Normalized, timeout_s: float, executor: Executor | None) -> list[Hit]:
    """The rail's scan in a worker thread, its timeout counted from when it starts running.

    Under load the checks of several chats queue for the few worker threads; charging that wait to
    each rail's timeout turned a busy box into fail-closed blocks of benign text. The wait itself
    stays bounded by the caller's deadline (the gRPC call is cancelled with it)."""
    loop = asyncio.get_running_loop()
    running = asyncio.Event()

    def scan() -> list[Hit]:
        loop.call_soon_threadsafe(running.set)
        return rail.scan(doc)

    # In this context, so a rail that calls another service (the judge) continues the trace.
    work = loop.run_in_executor(executor, contextvars.copy_context().run, scan)
    try:
        await running.wait()
        return await asyncio.wait_for(work, timeout_s)
    finally:
        work.cancel()  # the caller left or the rail timed out: nobody waits for its answer
