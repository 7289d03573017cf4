"""One stage of a chat or search: its span, its duration metric, its share of the caller's deadline,
and what a failed dependency means for the answer (an error, or an answer marked degraded).
No gRPC here."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeGuard, TypeVar

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from services.common.errors import ResourceExhausted, Unavailable
from services.router import metrics
from services.router.deadline import Deadline
from services.router.ports import (
    Decision,
    Grounding,
    Guardrails,
    RailFinding,
    RailVerdict,
    Stage,
    Verdict,
)
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer("forge.router")

T = TypeVar("T")
OnFailure = Literal["fail", "degrade"]


@dataclass
class Degradation:
    """The dependencies one answer went on without."""

    dependencies: list[str] = field(default_factory=list)

    def note(self, dependency: str, error: Exception | str) -> None:
        if dependency in self.dependencies:  # once per answer and dependency
            return
        log.warning("answer degraded: %s", error)
        metrics.DEGRADED.labels(dependency).inc()
        self.dependencies.append(dependency)

    def note_unchecked(self, verdict: RailVerdict) -> None:
        """Rails that failed open on this text: the answer went on without them."""
        for rail in verdict.unchecked_rails:
            self.note(f"rail:{rail}", f"guardrail {rail!r} failed open; its check was skipped")

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(self.dependencies)

    def __bool__(self) -> bool:
        return bool(self.dependencies)


class StageRunner:
    def __init__(self, settings: RouterSettings) -> None:
        self._settings = settings

    def timeout(self, stage: str, deadline: Deadline) -> float:
        """A stage before generation gets a share of what is left of the caller's deadline."""
        s = self._settings
        return deadline.stage_timeout(stage, s.pre_generation_deadline_share, s.stage_timeout_cap_s)

    async def run(
        self,
        name: str,
        work: Awaitable[T],
        attributes: Mapping[str, AttributeValue] | None = None,
        describe: Callable[[T], Mapping[str, AttributeValue]] | None = None,
    ) -> T:
        """Await `work` inside span "router.<name>" (with `attributes`, plus `describe(result)`)
        and time it."""
        started = time.monotonic()
        try:
            with tracer.start_as_current_span(f"router.{name}", attributes=attributes) as span:
                result = await work
                if describe is not None and span.is_recording():
                    span.set_attributes(describe(result))
                return result
        finally:
            metrics.STAGE_SECONDS.labels(name).observe(time.monotonic() - started)


class Rails:
    """The guardrails service as the use cases call it: off when disabled, and when it is down,
    either the call fails or the answer goes on unchecked, marked degraded (the policy)."""

    def __init__(self, settings: RouterSettings, guardrails: Guardrails, stages: StageRunner) -> None:
        self._settings = settings
        self._guardrails = guardrails
        self._stages = stages

    async def check(
        self,
        text: str,
        stage: Stage,
        deadline: Deadline,
        degradation: Degradation,
        grounding: Sequence[Grounding] = (),
    ) -> RailVerdict | None:
        """The verdict, or None when the text goes on unchecked (rails off, or down or overloaded
        and failing open). Rails that failed open inside the service mark the answer degraded."""
        if not self._settings.guardrails_enabled:
            return None
        timeout = self._stages.timeout(f"the {stage.value} rail", deadline)
        try:
            verdict = await self._stages.run(
                f"rail_{stage.value}",
                self._guardrails.check(text, stage, timeout, grounding),
                {"forge.text_chars": len(text)},
                lambda v: _rail_attributes(stage, v),
            )
        except (Unavailable, ResourceExhausted) as exc:
            if self._settings.on_guardrails_failure == "fail":
                raise
            degradation.note("guardrails", exc)
            return None
        degradation.note_unchecked(verdict)
        return verdict


def blocked(verdict: RailVerdict | None) -> TypeGuard[RailVerdict]:
    return verdict is not None and verdict.decision is Decision.BLOCK


def verdict_for_caller(
    verdict: RailVerdict, stage: Stage, offset: int = 0, turn: int | None = None
) -> Verdict:
    """A block, as the caller sees it: findings at their offsets in the whole answer (output), or
    in the message `turn` (input)."""
    rails = sorted({f.rail for f in verdict.findings}) or ["policy"]
    findings = tuple(
        RailFinding(f.rail, f.category, f.score, f.start + offset, f.end + offset) for f in verdict.findings
    )
    subject = "request" if stage is Stage.INPUT else "answer"
    where = f" in message {turn}" if turn is not None else ""
    return Verdict(
        decision=verdict.decision,
        stage=stage,
        findings=findings,
        message=f"The {subject} was blocked by the {stage.value} guardrail ({', '.join(rails)}){where}.",
        turn=turn,
    )


def _rail_attributes(stage: Stage, verdict: RailVerdict) -> dict[str, AttributeValue]:
    return {
        f"forge.rail.{stage.value}": verdict.decision.value,
        "forge.rail.findings": len(verdict.findings),
        "forge.rail.categories": sorted({f.category for f in verdict.findings}),
    }
