"""The guardrails domain core: validate a request, take a place in the queue of every rail the
stage needs (or refuse: RESOURCE_EXHAUSTED), normalise the text, run the rails concurrently (each
on its own threads, under a timeout that counts its run, not its queue), and combine their hits
into one verdict: what to redact (keeping entities the request's grounding holds), what blocks,
and which rails failed open. Nothing here knows about gRPC.

Tracing: a check is a span "guardrails.check" (stage, decision, findings) with one child span per
rail, "guardrails.rail.<name>" (its decision: allow, or the policy's action when it hit; hits,
top score; failed and why)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import Span

from services.common.errors import InvalidArgument, Unavailable
from services.guardrails import metrics
from services.guardrails.grounding import Grounding, GroundingText, validate_grounding
from services.guardrails.normalize import Normalized, normalize
from services.guardrails.policy import Action, OnFailure, Policy, RailConfig, Stage
from services.guardrails.rails.base import Hit, Rail
from services.guardrails.redact import redact
from services.guardrails.workers import RailWorkers, Reservation

NORMALIZE = "normalize"  # the normalisation step's workers, bounded like a rail's
NORMALIZE_WORKERS = 1
NORMALIZE_QUEUE = 64

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
class KeptEntity:
    """A redacting rail's hit kept because the grounding text `source` holds it too."""

    rail: str
    category: str
    start: int
    end: int
    source: str


@dataclass(frozen=True)
class RailTiming:
    rail: str
    seconds: float  # ran
    failed: bool
    reason: str = ""  # "timeout" or the exception type when failed
    queued_s: float = 0.0  # waited for one of the rail's threads
    failed_open: bool = False  # failed, and on_failure open let the text pass without it


@dataclass(frozen=True)
class Verdict:
    decision: Action | None  # None = allow
    findings: list[Finding]
    redacted_text: str
    timings: list[RailTiming]
    policy_version: str
    kept: list[KeptEntity] = field(default_factory=list)

    @property
    def unchecked_rails(self) -> list[str]:
        """Rails that failed open: the decision was taken without them."""
        return [t.rail for t in self.timings if t.failed_open]

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
        self.workers = {
            name: RailWorkers(name, policy.rails[name].workers, policy.rails[name].max_queue)
            for name in policy.used_rails()
        }
        self._normalize = RailWorkers(NORMALIZE, NORMALIZE_WORKERS, NORMALIZE_QUEUE)

    def close(self) -> None:
        for workers in (*self.workers.values(), self._normalize):
            workers.shutdown()

    async def check(self, text: str, stage: Stage | None, grounding: Sequence[GroundingText] = ()) -> Verdict:
        with tracer.start_as_current_span("guardrails.check") as span:
            stage = validate(text, stage, self.policy.max_chars)
            validate_grounding(grounding)
            span.set_attributes({"forge.stage": stage.value, "forge.text_chars": len(text)})
            names = self.policy.rails_for(stage)
            reservation = Reservation([self._normalize, *(self.workers[n] for n in names)])
            try:
                doc = (await reservation.run(self._normalize, lambda: normalize(text))).value
                outcomes = await asyncio.gather(*(self._run(name, stage, doc, reservation) for name in names))
            finally:
                reservation.close()
            verdict = self._combine(text, names, outcomes, Grounding(grounding))
            decision = verdict.decision.value if verdict.decision else "allow"
            span.set_attributes(
                {
                    "forge.decision": decision,
                    "forge.findings": len(verdict.findings),
                    "forge.kept": len(verdict.kept),
                    "forge.rails": names,
                    "forge.unchecked_rails": verdict.unchecked_rails,
                    "forge.policy_version": verdict.policy_version,
                }
            )
            metrics.CHECKS.labels(stage.value, decision).inc()
            return verdict

    async def _run(self, name: str, stage: Stage, doc: Normalized, reservation: Reservation) -> _Outcome:
        config = self.policy.rails[name]
        rail = self.rails[name]
        # Current in the worker thread too (the run copies the context): a rail that calls
        # another service (the judge) continues this trace.
        with tracer.start_as_current_span(
            f"guardrails.rail.{name}",
            attributes={
                "forge.rail": name,
                "forge.rail.kind": self.policy.kind_of(name),
                "forge.stage": stage.value,
            },
        ) as span:
            queued_at = time.perf_counter()
            queued_s = 0.0
            started = asyncio.Event()
            work = asyncio.ensure_future(reservation.run(self.workers[name], lambda: rail.scan(doc), started))
            try:
                # The timeout counts from when the scan leaves the queue; the wait in the queue is
                # bounded by max_queue and by the caller's deadline (the call is cancelled with it).
                await started.wait()
                queued_s = time.perf_counter() - queued_at
                metrics.RAIL_QUEUE_SECONDS.labels(name).observe(queued_s)
                span.set_attribute("forge.rail.queued_s", queued_s)
                ran = await asyncio.wait_for(work, config.timeout_ms / 1000)
            except TimeoutError:
                return self._failed(name, queued_at, queued_s, "timeout", span)
            except Unavailable:
                raise
            except Exception as exc:
                if not started.is_set():
                    raise
                log.exception("rail %s failed", name)
                return self._failed(name, queued_at, queued_s, type(exc).__name__, span)
            finally:
                work.cancel()  # the caller left or the rail timed out: nobody waits for its answer
            hits = ran.value
            metrics.RAIL_SECONDS.labels(name).observe(ran.run_s)
            span.set_attributes(
                {
                    "forge.rail.decision": config.action.value if hits else "allow",
                    "forge.rail.hits": len(hits),
                    "forge.rail.score": max((h.score for h in hits), default=0.0),
                    "forge.rail.categories": sorted({h.category for h in hits}),
                }
            )
            return _Outcome(hits, RailTiming(name, ran.run_s, failed=False, queued_s=queued_s))

    def _failed(self, name: str, queued_at: float, queued_s: float, reason: str, span: Span) -> _Outcome:
        config = self.policy.rails[name]
        metrics.RAIL_FAILURES.labels(name, reason, config.on_failure.value).inc()
        if config.on_failure is OnFailure.OPEN:
            log.warning("rail %s failed open (%s): its text passes unchecked by it", name, reason)
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
        run_s = time.perf_counter() - queued_at - queued_s
        failed_open = config.on_failure is OnFailure.OPEN
        return _Outcome([], RailTiming(name, run_s, True, reason, queued_s, failed_open))

    def _combine(
        self, text: str, names: list[str], outcomes: list[_Outcome], grounding: Grounding
    ) -> Verdict:
        findings: list[Finding] = []
        kept: list[KeptEntity] = []
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
                source = _grounded_source(config, text, hit, grounding)
                if source is not None:
                    kept.append(KeptEntity(name, hit.category, hit.start, hit.end, source))
                    metrics.KEPT.labels(name, hit.category).inc()
                    continue
                findings.append(Finding(name, hit.category, hit.score, hit.start, hit.end, config.action))
                metrics.FINDINGS.labels(name, hit.category).inc()
                actions.add(config.action)
                if config.action is Action.REDACT:
                    to_redact.append(hit)
        decision = next((a for a in (Action.BLOCK, Action.REDACT, Action.FLAG) if a in actions), None)
        redacted = redact(text, to_redact) if to_redact else text
        return Verdict(decision, findings, redacted, timings, self.policy.version, kept)


def _grounded_source(config: RailConfig, text: str, hit: Hit, grounding: Grounding) -> str | None:
    if config.action is not Action.REDACT or not config.keep_grounded or not grounding.texts:
        return None
    return grounding.source_of(text[hit.start : hit.end])
