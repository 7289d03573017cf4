"""Builds the rails a policy names from the loaded parts (Presidio, the trained heads, the
sentence encoder). Heavy parts load only when some stage uses a rail that needs them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.channels import PLAINTEXT, Dialer
from services.guardrails.encoder import TextEncoder
from services.guardrails.policy import Policy, PolicyError
from services.guardrails.rails.base import Rail
from services.guardrails.rails.classifier import ClassifierRail
from services.guardrails.rails.judge import JudgeConfig, JudgeRail, UnknownJudgeBackend, make_judge
from services.guardrails.rails.obfuscation import ObfuscationRail
from services.guardrails.rails.phrases import PhrasesRail
from services.guardrails.rails.pii import PiiRail, build_analyzer, default_entities
from services.guardrails.rails.secrets import SecretsRail
from services.guardrails.rails.topics import TopicsRail
from services.guardrails.training.heads import HarmHead, HeadStore, InjectionHead

log = logging.getLogger(__name__)


@dataclass
class Parts:
    encoder: TextEncoder | None = None
    analyzer: Any = None
    has_ner: bool = False
    injection: InjectionHead | None = None
    harm: HarmHead | None = None


def load_parts(
    policy: Policy,
    home: Path,
    device: str,
    slice_fraction: float,
    train_if_missing: bool,
    cap_to_slice: bool = True,
) -> Parts:
    kinds = {policy.kind_of(name) for name in policy.used_rails()}
    parts = Parts()
    if kinds & {"harm", "topics", "injection"}:
        parts.encoder = TextEncoder.load(device, slice_fraction, cap_to_slice)
    if "pii" in kinds:
        parts.analyzer, parts.has_ner = build_analyzer()
    if kinds & {"harm", "injection"}:
        assert parts.encoder is not None
        store = HeadStore.under(home)
        if not store.complete():
            if not train_if_missing:
                raise RuntimeError(
                    f"no trained guardrail heads in {store.root}: run `forge guardrails train`"
                )
            log.info("no trained heads in %s: training now", store.root)
            store.train(parts.encoder)
        parts.injection, parts.harm = store.load(parts.encoder)
    return parts


def build_rails(policy: Policy, parts: Parts, dialer: Dialer = PLAINTEXT) -> dict[str, Rail]:
    rails: dict[str, Rail] = {}
    for name in policy.used_rails():
        cfg = policy.rails[name]
        kind = policy.kind_of(name)
        rail: Rail
        if kind == "obfuscation":
            rail = ObfuscationRail(name, cfg.threshold)
        elif kind == "pii":
            entities = cfg.entities or default_entities(parts.has_ner)
            rail = PiiRail(name, parts.analyzer, cfg.threshold, entities)
        elif kind == "secrets":
            rail = SecretsRail(name, cfg.threshold)
        elif kind == "injection":
            assert parts.injection is not None
            rail = ClassifierRail(name, kind, "prompt_injection", parts.injection, cfg.threshold, cfg.repeat)
        elif kind == "harm":
            assert parts.harm is not None
            rail = ClassifierRail(name, kind, "harmful_request", parts.harm, cfg.threshold, cfg.repeat)
        elif kind == "topics":
            assert parts.encoder is not None
            rail = TopicsRail(
                name,
                parts.encoder,
                cfg.threshold,
                {t.name: t.examples for t in cfg.denied_topics},
                {t.name: t.examples for t in cfg.allowed_topics},
                cfg.repeat,
            )
        elif kind == "phrases":
            try:
                rail = PhrasesRail(name, cfg.phrases)
            except ValueError as exc:
                raise PolicyError(str(exc)) from exc
        elif kind == "judge":
            try:
                judge_config = JudgeConfig(cfg.address, cfg.timeout_ms / 1000, cfg.max_tokens, dialer)
                rail = JudgeRail(name, make_judge(cfg.backend, judge_config), cfg.threshold)
            except UnknownJudgeBackend as exc:
                raise PolicyError(f"rails.{name}: {exc}") from exc
        else:  # the policy validator already refuses unknown kinds
            raise PolicyError(f"rails.{name}: unknown rail kind {kind!r}")
        rails[name] = rail
    return rails


def close_rails(rails: Mapping[str, Rail]) -> None:
    """Release what rails hold open (the judge's channel to its backend)."""
    for rail in rails.values():
        close = getattr(rail, "close", None)
        if callable(close):
            close()
