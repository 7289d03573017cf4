"""Shared by the GPU tests: the card, its profile, service environments, figures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FIGURES_ENV = "FORGE_GPU_FIGURES"

# A guardrails policy whose only rail needs the sentence encoder (the service's GPU part) and
# nothing trained or downloaded: the topics rail embeds every text it checks.
ENCODER_ONLY_POLICY = """
version: "gpu-test"
max_chars: 32768
rails:
  topics:
    action: flag
    threshold: 0.6
    timeout_ms: 30000
    on_failure: closed
    denied_topics:
      - name: investment_advice
        examples:
          - Which stocks should I buy right now to get rich?
          - Should I put my savings into bitcoin or index funds?
stages:
  input: [topics]
  retrieval: [topics]
  output: [topics]
"""


def card() -> tuple[str, int]:
    """Name and memory (NVML) of GPU 0."""
    from services.common.gpu import read_gpu_snapshot

    snapshot = read_gpu_snapshot()
    assert snapshot.available, snapshot.detail
    return snapshot.devices[0].name, snapshot.devices[0].total_bytes


def profile_for_card() -> str:
    """The shipped profile of this card class (fractions are what matter; bytes follow the card)."""
    return "h200" if card()[1] > 100 * 2**30 else "h100"


@dataclass
class Figure:
    test: str
    card: str
    service: str
    isolation: str
    slice_bytes: int
    peak_bytes: int
    measured_by: str
    within: bool


def service_env(home: Path, profile: str, **extra: str) -> dict[str, str]:
    """Environment of a GPU service process: the card's profile, CUDA forced (a silent fall back to
    the CPU would pass every memory check), the encoder-only guardrails policy. Plaintext between
    the test and the service: these tests measure memory, tests/integration/test_security.py TLS."""
    return {
        "FORGE_INTERNAL_TLS": "off",
        "FORGE_PROFILE": profile,
        "FORGE_HOME": str(home),
        "FORGE_EMBED_DEVICE": "cuda",
        "FORGE_GUARDRAILS_DEVICE": "cuda",
        "FORGE_GUARDRAILS_POLICY_PATH": str(home / "policy.yaml"),
        "FORGE_GUARDRAILS_TRAIN_IF_MISSING": "false",
        **extra,
    }
