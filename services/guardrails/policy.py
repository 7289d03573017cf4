"""The deployment's guardrails policy (YAML): which rails run at which stage, each rail's
threshold, action, timeout and failure mode. Validated as a whole at start: an unknown rail kind,
a stage naming a rail that is not defined, or a bad value is a startup error, never a silent pass.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.yamlfile import read_yaml, validation_problems

RAIL_KINDS = ("obfuscation", "pii", "secrets", "injection", "harm", "topics", "phrases", "judge")


def default_policy_path() -> Path:
    """The copy packaged in the wheel, else the repo's deploy/ file (editable installs)."""
    packaged = Path(__file__).resolve().parent / "data" / "guardrails_policy.yaml"
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "deploy" / "guardrails_policy.yaml"


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the field and why."""


class Stage(StrEnum):
    INPUT = "input"
    RETRIEVAL = "retrieval"
    OUTPUT = "output"


class Action(StrEnum):
    BLOCK = "block"
    REDACT = "redact"
    FLAG = "flag"  # reported in findings, the text passes


class OnFailure(StrEnum):
    OPEN = "open"  # a failed or late rail is ignored
    CLOSED = "closed"  # a failed or late rail blocks


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicSpec(_Strict):
    name: str
    examples: Annotated[list[str], Field(min_length=1)]


class RailConfig(_Strict):
    kind: str = ""  # default: the rail's name
    action: Action = Action.FLAG
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    timeout_ms: Annotated[float, Field(gt=0)] = 500.0
    on_failure: OnFailure = OnFailure.OPEN
    # The rail's own threads, and how many texts may wait for them; a check that would queue
    # beyond that is refused (RESOURCE_EXHAUSTED with a retry delay), never run unchecked.
    workers: Annotated[int, Field(ge=1, le=32)] = 1
    max_queue: Annotated[int, Field(ge=0, le=4096)] = 16
    # Redacting rails: keep an entity that the request's grounding (the tenant's retrieved
    # chunks, the caller's own messages) holds too; false = strict redaction.
    keep_grounded: bool = False
    # Kind-specific settings.
    entities: list[str] = Field(default_factory=list)  # pii: Presidio entity names ([] = all)
    denied_topics: list[TopicSpec] = Field(default_factory=list)  # topics
    allowed_topics: list[TopicSpec] = Field(default_factory=list)  # topics
    phrases: list[str] = Field(default_factory=list)  # phrases: case-insensitive regexes
    backend: str = ""  # judge: a backend name (llm_service)
    address: str = ""  # judge: the backend's host:port ("" = the local LLM service, 127.0.0.1:50052)
    max_tokens: Annotated[int, Field(ge=1, le=64)] = 4  # judge: tokens the judge may answer with
    # Test hook: a rail that repeats its work this many times (a real slow rail for timeout tests).
    repeat: Annotated[int, Field(ge=1, le=10000)] = 1


class Policy(_Strict):
    version: Annotated[str, Field(min_length=1)]
    max_chars: Annotated[int, Field(ge=1)] = 32768
    rails: dict[str, RailConfig]
    stages: dict[Stage, list[str]]

    @model_validator(mode="after")
    def _check(self) -> Policy:
        for name, rail in self.rails.items():
            kind = rail.kind or name
            if kind not in RAIL_KINDS:
                raise ValueError(
                    f"rails.{name}: unknown rail kind {kind!r}; known kinds: {', '.join(RAIL_KINDS)}"
                )
            if kind == "topics" and not (rail.denied_topics or rail.allowed_topics):
                raise ValueError(f"rails.{name}: a topics rail needs denied_topics or allowed_topics")
            if kind == "phrases" and not rail.phrases:
                raise ValueError(f"rails.{name}: a phrases rail needs at least one phrase")
            if kind == "judge" and not rail.backend:
                raise ValueError(f"rails.{name}: a judge rail needs a backend")
        for stage, names in self.stages.items():
            for name in names:
                if name not in self.rails:
                    raise ValueError(
                        f"stages.{stage.value}: unknown rail {name!r}; defined rails: {', '.join(self.rails)}"
                    )
            if len(set(names)) != len(names):
                raise ValueError(f"stages.{stage.value}: a rail is listed twice")
        return self

    def kind_of(self, name: str) -> str:
        return self.rails[name].kind or name

    def rails_for(self, stage: Stage) -> list[str]:
        return list(self.stages.get(stage, []))

    def used_rails(self) -> list[str]:
        seen: dict[str, None] = {}
        for names in self.stages.values():
            for name in names:
                seen[name] = None
        return list(seen)


def parse_policy(data: Any, source: str = "policy") -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: {'; '.join(validation_problems(exc))}") from None


def load_policy(path: Path | None = None) -> Policy:
    path = path or default_policy_path()
    return parse_policy(read_yaml(path, "guardrails policy", PolicyError), str(path))
