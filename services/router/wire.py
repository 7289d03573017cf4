"""The router's domain enums and their protobuf values, one table each, used both ways: by the
servicer (answers to the router's callers) and by the downstream clients (calls to the services)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from forge.v1 import common_pb2, guardrails_pb2

from services.router.ports import Decision, FinishReason, Priority, Stage

K = TypeVar("K")
V = TypeVar("V")


def _inverse(table: Mapping[K, V]) -> dict[V, K]:
    return {value: key for key, value in table.items()}


STAGE_TO_PB = {
    Stage.INPUT: guardrails_pb2.STAGE_INPUT,
    Stage.RETRIEVAL: guardrails_pb2.STAGE_RETRIEVAL,
    Stage.OUTPUT: guardrails_pb2.STAGE_OUTPUT,
}
DECISION_TO_PB = {
    Decision.ALLOW: guardrails_pb2.DECISION_ALLOW,
    Decision.REDACT: guardrails_pb2.DECISION_REDACT,
    Decision.BLOCK: guardrails_pb2.DECISION_BLOCK,
}
FINISH_TO_PB = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.BLOCKED: common_pb2.FINISH_REASON_BLOCKED,
}
PRIORITY_TO_PB = {
    Priority.INTERACTIVE: common_pb2.PRIORITY_INTERACTIVE,
    Priority.BATCH: common_pb2.PRIORITY_BATCH,
}

# Unspecified values read as the protos document them; a decision never does (an error, not allow).
DECISION_FROM_PB = _inverse(DECISION_TO_PB)
FINISH_FROM_PB = _inverse(FINISH_TO_PB)
PRIORITY_FROM_PB = {**_inverse(PRIORITY_TO_PB), common_pb2.PRIORITY_UNSPECIFIED: Priority.INTERACTIVE}
