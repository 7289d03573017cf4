"""Held-out accuracy of the guardrail rails on this machine.

Prints, per rail and positive set: recall at the policy's threshold, false-positive rate on held-out
benign prompts (neuralchemy benign rows + authored hard benign prompts that mention trigger
words), and p50 latency of one rail on one text. Also prints, for the trained heads, the
threshold that would give 2 % FPR on the benign set, to check the policy's choice.

    python bench/guardrails_eval.py [--policy PATH] [--home DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.common.settings import ForgeSettings
from services.guardrails.factory import build_rails, load_parts
from services.guardrails.normalize import normalize
from services.guardrails.policy import load_policy
from services.guardrails.training.evaluate import (
    evaluate_rail,
    format_table,
    held_out,
    threshold_for_fpr,
)


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
    rows += evaluate_rail(rails["injection"], data.injection, data.benign)
    rows += evaluate_rail(rails["harm"], data.harm, data.benign)
    rows += evaluate_rail(rails["pii"], data.pii, data.benign)
    rows += evaluate_rail(rails["secrets"], data.secrets, data.benign)
    print(f"policy {policy.version}; benign held-out set: {len(data.benign)} prompts")
    print(format_table(rows))
    assert parts.injection is not None and parts.harm is not None
    benign_views = [normalize(t).text for t in data.benign]
    for name, head in (("injection", parts.injection), ("harm", parts.harm)):
        scores = [float(s) for s in head.score(benign_views)]
        print(
            f"{name}: policy threshold {policy.rails[name].threshold:.3f}; "
            f"threshold for 2% FPR on benign: {threshold_for_fpr(scores, 0.02):.3f}"
        )


if __name__ == "__main__":
    main()
