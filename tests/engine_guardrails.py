"""The guardrails engine behind the router's Guardrails port, mapped as the gRPC client and the
servicer map it, without gRPC: the router's use cases around the real rails in one process
(tests/unit/test_chat_rails.py, bench/guardrails_eval.py's multi-turn and output sets)."""

from __future__ import annotations

from collections.abc import Sequence

from services.guardrails.engine import Guard
from services.guardrails.grounding import GroundingText
from services.guardrails.policy import Action
from services.guardrails.policy import Stage as EngineStage
from services.router.ports import Decision, Grounding, RailFinding, RailVerdict, Stage

_DECISIONS = {None: Decision.ALLOW, Action.FLAG: Decision.ALLOW, Action.REDACT: Decision.REDACT}


class EngineGuardrails:
    """The guardrails engine behind the router's port, as the gRPC client and servicer map it."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.asked: list[tuple[Stage, str]] = []

    async def check(
        self, text: str, stage: Stage, timeout_s: float, grounding: Sequence[Grounding] = ()
    ) -> RailVerdict:
        self.asked.append((stage, text))
        verdict = await self.guard.check(
            text, EngineStage(stage.value), [GroundingText(g.source, g.text) for g in grounding]
        )
        return RailVerdict(
            decision=_DECISIONS.get(verdict.decision, Decision.BLOCK),
            findings=tuple(
                RailFinding(f.rail, f.category, f.score, f.start, f.end, f.action is Action.REDACT)
                for f in verdict.findings
            ),
            redacted_text=verdict.redacted_text,
            unchecked_rails=tuple(verdict.unchecked_rails),
        )
