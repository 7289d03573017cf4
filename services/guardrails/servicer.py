"""gRPC adapter of the guardrails service: messages in, domain call, messages out."""

from __future__ import annotations

from forge.v1 import guardrails_pb2, guardrails_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from grpc import aio

from services.common.codec import finding_to_pb
from services.common.errors import InvalidArgument, Unavailable
from services.guardrails.engine import Guard
from services.guardrails.grounding import GroundingText
from services.guardrails.policy import Action, Stage

_STAGES = {
    guardrails_pb2.STAGE_INPUT: Stage.INPUT,
    guardrails_pb2.STAGE_RETRIEVAL: Stage.RETRIEVAL,
    guardrails_pb2.STAGE_OUTPUT: Stage.OUTPUT,
}
_DECISIONS = {
    None: guardrails_pb2.DECISION_ALLOW,
    Action.FLAG: guardrails_pb2.DECISION_ALLOW,
    Action.REDACT: guardrails_pb2.DECISION_REDACT,
    Action.BLOCK: guardrails_pb2.DECISION_BLOCK,
}


class GuardrailsServicer(guardrails_pb2_grpc.GuardrailsServiceServicer):
    def __init__(self) -> None:
        self.guard: Guard | None = None

    async def Check(
        self, request: guardrails_pb2.CheckRequest, context: aio.ServicerContext[object, object]
    ) -> guardrails_pb2.CheckResponse:
        stage = _STAGES.get(request.stage)
        if stage is None:
            raise InvalidArgument(
                "stage", f"must be STAGE_INPUT, STAGE_RETRIEVAL or STAGE_OUTPUT, got {request.stage}"
            )
        if self.guard is None:
            raise Unavailable("guardrails models", "still loading; retry shortly")
        grounding = [GroundingText(g.source, g.text) for g in request.grounding]
        verdict = await self.guard.check(request.text, stage, grounding)
        return guardrails_pb2.CheckResponse(
            decision=_DECISIONS[verdict.decision],
            findings=[finding_to_pb(f, redacted=f.action is Action.REDACT) for f in verdict.findings],
            redacted_text=verdict.redacted_text,
            timings=[
                guardrails_pb2.RailTiming(
                    rail=t.rail,
                    duration=_duration(t.seconds),
                    failed=t.failed,
                    queued=_duration(t.queued_s),
                    failure=t.reason,
                    failed_open=t.failed_open,
                )
                for t in verdict.timings
            ],
            policy_version=verdict.policy_version,
            kept=[
                guardrails_pb2.KeptEntity(
                    rail=k.rail, category=k.category, start=k.start, end=k.end, source=k.source
                )
                for k in verdict.kept
            ],
            unchecked_rails=verdict.unchecked_rails,
        )


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration
