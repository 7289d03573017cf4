"""The secrets rail scans hostile text in linear time (issue 12) and still finds what its original
Python patterns found.

Timing is a ratio within one run (CPU time on 32k characters against 1k of the same adversarial
text, the best of a few repeats each), never an absolute limit: linear is 32x, a backtracking
pattern on its worst case is ~1000x."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import pytest

from services.guardrails.normalize import normalize
from services.guardrails.rails.secrets import ASSIGNMENT, PATTERNS, Found, SecretPattern, SecretsRail

ALL = {p.label: p for p in (*PATTERNS, ASSIGNMENT)}
SMALL, LARGE = 1_000, 32_000
MAX_RATIO = 64  # linear is 32; the slack absorbs noise on a busy machine
REPEATS = 7

# Per pattern, text units that repeated make the worst cases for a backtracking engine: long runs
# that almost match (every position a fresh start that scans to the end of the run and fails), and
# runs of real secrets (one match after another).
ADVERSARIAL: dict[str, list[str]] = {
    "PRIVATE_KEY": ["-----BEGIN PRIVATE KEY-----", "-----BEGIN A ", "-----END RSA PRIVATE KEY-----"],
    "AWS_ACCESS_KEY": ["AKIA", "AKIAIOSFODNN7EXAMPLE "],
    "AWS_SECRET_KEY": ["aws secret= ", "awssecret:", "aws_secret=" + "A" * 39 + "/ "],
    "GITHUB_TOKEN": ["ghp_", "a-ghp_", "ghp_" + "a1B2" * 9 + " "],
    "GITLAB_TOKEN": ["glpat-", "glpat-" + "a" * 20 + " "],
    "SLACK_TOKEN": ["xoxb-", "xoxb-1234567890 "],
    "OPENAI_KEY": ["sk-", "sk-proj-", "-"],
    "ANTHROPIC_KEY": ["sk-ant-", "sk-ant-" + "a" * 20 + " "],
    "STRIPE_KEY": ["sk_live_", "sk_live_" + "a" * 16 + " "],
    "GOOGLE_API_KEY": ["AIza-", "AIza" + "a" * 35 + " "],
    "HF_TOKEN": ["hf_", "-hf_", "hf_" + "a" * 30 + " "],
    "JWT": ["eyJ-", "eyJa.", "eyJaaaaaaaa.eyJ-", "eyJaaaaaaaa.eyJaaaaaaaa.aaaaaaaa "],
    "BEARER_TOKEN": ["bearer ", "Bearer a", "bearer " + "a" * 20 + " "],
    "CONNECTION_STRING": ["a.", "a-", "a://a:", "a.a://a", "x://u:pwd@h "],
    "GENERIC_SECRET": ["pwd= ", "password:", "secret:' ", "api_key=Tr0ub4dor3x "],
}


def _repeat(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def growth(scan: Callable[[str], object], unit: str) -> float:
    """How much longer `scan` takes on 32k characters of `unit` than on 1k: this thread's CPU time
    (other processes on a busy machine do not count), the best of a few interleaved runs each."""
    small, large = _repeat(unit, SMALL), _repeat(unit, LARGE)
    scan(small)  # warm up
    best_small = best_large = float("inf")
    for _ in range(REPEATS):
        started = time.thread_time()
        scan(small)
        best_small = min(best_small, time.thread_time() - started)
        started = time.thread_time()
        scan(large)
        best_large = min(best_large, time.thread_time() - started)
    return best_large / best_small


def _scan_all(pattern: SecretPattern) -> Callable[[str], object]:
    return lambda text: list(pattern.finditer(text))


@pytest.mark.parametrize(
    ("label", "unit"), [(label, unit) for label, units in ADVERSARIAL.items() for unit in units]
)
def test_pattern_time_grows_linearly(label: str, unit: str) -> None:
    ratio = growth(_scan_all(ALL[label]), unit)
    assert ratio <= MAX_RATIO, f"{label} on {unit!r}: 32k takes {ratio:.0f}x the time of 1k"


def test_every_pattern_has_adversarial_cases() -> None:
    assert set(ADVERSARIAL) == set(ALL)


@pytest.mark.parametrize("unit", ["a.", "eyJ-", "AKIAIOSFODNN7EXAMPLE é", "x://u:pwd@h\u3000"])
def test_rail_and_normalisation_time_grows_linearly(unit: str) -> None:
    rail = SecretsRail("secrets", threshold=0.7)
    ratio = growth(lambda text: rail.scan(normalize(text)), unit)
    assert ratio <= MAX_RATIO, f"normalize + scan on {unit!r}: 32k takes {ratio:.0f}x the time of 1k"


# --- the detections are the original Python patterns' -------------------------------------------

_KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"
POSITIVE: dict[str, tuple[str, str]] = {  # label: (text, the secret the rail reports)
    "PRIVATE_KEY": (f"x\n{_KEY}\ny", _KEY),
    "AWS_ACCESS_KEY": ("key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    "AWS_SECRET_KEY": (
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    "GITHUB_TOKEN": ("token ghp_" + "a1B2" * 9, "ghp_" + "a1B2" * 9),
    "GITLAB_TOKEN": ("glpat-abcdefghij0123456789-", "glpat-abcdefghij0123456789"),
    "SLACK_TOKEN": ("xoxb-1234-5678-abcdef.", "xoxb-1234-5678-abcdef"),
    "OPENAI_KEY": (
        "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx1234",
        "sk-proj-abcdefghijklmnopqrstuvwx1234",
    ),
    "ANTHROPIC_KEY": ("sk-ant-api03-abcdefghijklmnop", "sk-ant-api03-abcdefghijklmnop"),
    "STRIPE_KEY": ("sk_live_abcdefghijklmnop12", "sk_live_abcdefghijklmnop12"),
    "GOOGLE_API_KEY": ("key=AIza" + "Sy_a1" * 7, "AIza" + "Sy_a1" * 7),
    "HF_TOKEN": ("HF hf_" + "abcDEF123" * 4, "hf_" + "abcDEF123" * 4),
    "JWT": ("jwt eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJ-_ end", "eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJ-_"),
    "BEARER_TOKEN": ("Authorization: Bearer abcdefghijklmnopqrst==", "abcdefghijklmnopqrst=="),
    "CONNECTION_STRING": ("postgres://app:s3cretPass@db.internal:5432/app", "s3cretPass"),
    "GENERIC_SECRET": ("db_password = 'Tr0ub4dor&3xyz'", "Tr0ub4dor&3xyz"),
}

NEGATIVE: dict[str, str] = {  # label: a near miss
    "PRIVATE_KEY": "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
    "AWS_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE2",  # one character too many: no word boundary
    "AWS_SECRET_KEY": "aws secret = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE",  # 39 characters
    "GITHUB_TOKEN": "ghp_" + "a1B2" * 8,  # 32 characters
    "GITLAB_TOKEN": "glpat-abcdefghij012345678",  # 19 characters
    "SLACK_TOKEN": "xoxq-1234-5678-abcdef",
    "OPENAI_KEY": "task-abcdefghijklmnopqrstuvwx",  # no word boundary before sk-
    "ANTHROPIC_KEY": "sk-ant-short",
    "STRIPE_KEY": "sk_prod_abcdefghijklmnop12",
    "GOOGLE_API_KEY": "AIza" + "a" * 34,
    "HF_TOKEN": "hf_" + "a" * 29,
    "JWT": "eyJhbGciOiJI.eyJzdWIiOiIx",
    "BEARER_TOKEN": "bearer of bad news",
    "CONNECTION_STRING": "https://docs.example.com:443/path",
    "GENERIC_SECRET": "The password field is required and must be at least 12 characters.",
}


@pytest.mark.parametrize("label", list(ALL))
def test_each_pattern_finds_its_secret_and_not_a_near_miss(label: str) -> None:
    text, secret = POSITIVE[label]
    found = list(ALL[label].finditer(text))
    assert [text[f.secret_start : f.secret_end] for f in found] == [secret]
    assert list(ALL[label].finditer(NEGATIVE[label])) == []
    if label != "GENERIC_SECRET":  # the rail adds an entropy test to this one
        assert label in {h.label for h in SecretsRail("secrets", threshold=0.0).scan(normalize(text))}


def _python_finditer(pattern: SecretPattern, text: str) -> list[Found]:
    """What the original Python pattern reports: its match and its group "v" (else the match)."""
    compiled = re.compile(pattern.python)
    found = []
    for m in compiled.finditer(text):
        start, end = m.span()
        has_v = "v" in compiled.groupindex and m.group("v")
        secret_start, secret_end = m.span("v") if has_v else (start, end)
        found.append(Found(start, end, secret_start, secret_end))
    return found


# Characters where Python's Unicode \w, \s and (?i) differ from RE2's ASCII ones, and pieces of
# the secrets, to splice into the positive examples.
_TRICKY = [*"é\u0130\u0131\u017f\u212a日٣_-. \n=/+@:'aZ0", "\x85", "\u3000", "\x1c", "\u2028", ""]


def _mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(0, 3)):
        i = rng.randrange(len(chars) + 1)
        op, piece = rng.random(), rng.choice(_TRICKY)
        if op < 0.4 and i < len(chars):
            chars[i] = piece
        elif op < 0.7:
            chars.insert(i, piece)
        elif i < len(chars):
            del chars[i]
    return "".join(chars)


def _samples(count: int) -> list[str]:
    rng = random.Random(12)
    seeds = [text for text, _ in POSITIVE.values()] + list(NEGATIVE.values())
    samples = [
        "密钥AKIAIOSFODNN7EXAMPLE",  # Python's \b: no boundary after a CJK character
        "AKIAIOSFODNN7EXAMPLEé",
        "glpat-abcdefghij0123456789-é and glpat-abcdefghij0123456789-",
        "eyJ-a-b-c-d.eyJ-e-f-g-h.-i-j-k-l-日",
        "ap\u0131_key=Tr0ub4dor3x \u017fecret:Tr0ub4dor3x \u0130pwd=Tr0ub4dor3x",
        "bearer\u3000abcdefghijklmnopqrst\u0130== aws secret:\x85" + "\u212a" * 40,
        "x://u:pw\x85d@h x://u:pwd@h\u2028y",
        "x\ud800AKIAIOSFODNN7EXAMPLE\udfff postgres://a:b\ud800cd@e f",  # lone surrogates
    ]
    while len(samples) < count:
        parts = [_mutate(rng, rng.choice(seeds)) for _ in range(rng.randint(1, 3))]
        samples.append(
            rng.choice(_TRICKY) + "".join(p + rng.choice(_TRICKY) + rng.choice(_TRICKY) for p in parts)
        )
    return samples


@pytest.mark.parametrize("label", list(ALL))
def test_finds_exactly_what_the_python_pattern_finds(label: str) -> None:
    pattern = ALL[label]
    samples = _samples(1_500)
    mismatches = [t for t in samples if list(pattern.finditer(t)) != _python_finditer(pattern, t)]
    assert mismatches == []
    assert sum(len(_python_finditer(pattern, t)) for t in samples) > 10  # the samples do exercise it
