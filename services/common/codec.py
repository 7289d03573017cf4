"""Protobuf messages shared by several services, to and from their domain types: one function per
direction, so a field added to the proto is read and written in one place."""

from __future__ import annotations

from typing import Protocol

from forge.v1 import common_pb2, guardrails_pb2

from services.common.sampling import SamplingParams


def sampling_from_pb(params: common_pb2.SamplingParams) -> SamplingParams:
    """Unset optional fields stay None (the serving side's default)."""
    return SamplingParams(
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        top_k=params.top_k if params.HasField("top_k") else None,
        stop=tuple(params.stop),
        seed=params.seed if params.HasField("seed") else None,
    )


def sampling_to_pb(sampling: SamplingParams) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        stop=sampling.stop,
        seed=sampling.seed,
    )


class FindingFields(Protocol):
    """What a guardrail finding is, whichever service holds it."""

    @property
    def rail(self) -> str: ...
    @property
    def category(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


def finding_to_pb(finding: FindingFields, redacted: bool = False) -> guardrails_pb2.Finding:
    return guardrails_pb2.Finding(
        rail=finding.rail,
        category=finding.category,
        score=finding.score,
        start=finding.start,
        end=finding.end,
        redacted=redacted,
    )
