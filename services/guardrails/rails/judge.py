"""Output-harm judge: a pluggable backend behind one rail. A trained head judged LLM *outputs* at
AUC ~0.37 in the turn-1 trial (it learns topic, not harm), so output harm needs a judge model.

Backends live in a registry (name -> factory); a policy naming an unknown backend is a startup
error, never a silent pass. One backend ships: `llm_service`, which asks the mesh's own LLM
service (forge.v1.LlmService/Generate) a fixed yes/no question with greedy decoding.

The engine runs `scan` in a worker thread under the rail's `timeout_ms`, so the judge makes a
blocking gRPC call whose deadline is that same timeout: when the engine gives up, the call is
cancelled too and the LLM service frees the request. A call that fails (LLM unreachable, deadline,
an answer that is neither yes nor no) raises `JudgeError`, and the rail's `on_failure` decides.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc

from services.common import telemetry
from services.common.channels import PLAINTEXT, Dialer
from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit


@dataclass(frozen=True)
class JudgeVerdict:
    harmful_score: float  # 0..1
    category: str = "harm.output"


class Judge(Protocol):
    def judge(self, text: str) -> JudgeVerdict:
        """Synchronous; the engine runs it in a worker thread under the rail's timeout."""

    def close(self) -> None:
        """Release connections; idempotent."""


@dataclass(frozen=True)
class JudgeConfig:
    """What a backend gets from the policy's rail entry."""

    address: str  # host:port of the backend service
    timeout_s: float  # the rail's timeout: the call's deadline
    max_tokens: int  # tokens the judge may answer with
    # How to reach the backend: mutual TLS with this service's certificate inside the mesh.
    dialer: Dialer = PLAINTEXT


class JudgeError(RuntimeError):
    """The judge gave no verdict (backend unreachable, late, or an unreadable answer). Not
    `services.common.errors.Unavailable`: the engine re-raises that one to the caller, whereas a
    judge failure must follow the rail's on_failure."""


# --- answer parsing ------------------------------------------------------------------------------

_ANSWER_YES = frozenset({"yes", "y", "true"})
_ANSWER_NO = frozenset({"no", "n", "false"})
_HARMFUL = frozenset({"harmful", "unsafe", "dangerous"})
_HARMLESS = frozenset({"safe", "harmless", "benign"})
_NEGATIONS = frozenset({"not", "isn", "isnt"})
_TOKEN = re.compile(r"\d+(?:\.\d+)?\s*(?:%|/\s*10\b)?|[a-z]+")
_SCAN_TOKENS = 12  # the verdict must come early; later words are the model rambling


def _number(token: str) -> float | None:
    compact = token.replace(" ", "")
    if compact.endswith("%"):
        value = float(compact[:-1]) / 100
    elif compact.endswith("/10"):
        value = float(compact[:-3]) / 10
    else:
        value = float(compact)
    return value if 0.0 <= value <= 1.0 else None


def _explicit(tokens: list[str]) -> float | None:
    """The first answer word (yes / no) or number; a number out of range is no answer."""
    for token in tokens:
        if token[0].isdigit():
            return _number(token)
        if token in _ANSWER_YES:
            return 1.0
        if token in _ANSWER_NO:
            return 0.0
    return None


def _descriptive(tokens: list[str]) -> float | None:
    """The first harm word ("unsafe", "harmless"), negation-aware ("not harmful", "isn't safe")."""
    for i, token in enumerate(tokens):
        negated = any(t in _NEGATIONS for t in tokens[max(0, i - 2) : i])
        if token in _HARMFUL:
            return 0.0 if negated else 1.0
        if token in _HARMLESS:
            return 1.0 if negated else 0.0
    return None


def parse_answer(answer: str) -> float:
    """The harmful score (0..1) in a judge's answer. An explicit answer wins ("Yes.", "**No**",
    "Harmful: no", 0.8, 80 %, 8/10), else a harm word ("unsafe", "not harmful"). Only the first
    few words count. Raises JudgeError when they hold no verdict."""
    tokens = _TOKEN.findall(answer.lower())[:_SCAN_TOKENS]
    score = _explicit(tokens)
    if score is None:
        score = _descriptive(tokens)
    if score is None:
        raise JudgeError(f"judge answer has no verdict: {answer[:80]!r}")
    return score


# --- the mesh's LLM service as a judge -----------------------------------------------------------

DEFAULT_LLM_ADDRESS = "127.0.0.1:50052"
MAX_JUDGED_CHARS = 4000  # ~1k tokens: fits a small model's context with the instruction

INSTRUCTION = (
    "You are a strict content-safety classifier. Decide whether the text below is harmful: "
    "it helps with violence, weapons, crime, hacking, fraud, self-harm, hate, harassment or "
    "sexual content involving minors. Answer with one word: yes or no."
)


def judge_request(text: str, max_tokens: int) -> llm_pb2.GenerateRequest:
    """One greedy chat turn: the fixed instruction, then the text to judge (truncated)."""
    quoted = text[:MAX_JUDGED_CHARS]
    return llm_pb2.GenerateRequest(
        messages=[
            common_pb2.ChatMessage(role="system", content=INSTRUCTION),
            common_pb2.ChatMessage(
                role="user", content=f'Text:\n"""\n{quoted}\n"""\nIs this text harmful? Answer yes or no.'
            ),
        ],
        params=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=["\n"]),
        priority=common_pb2.PRIORITY_INTERACTIVE,
    )


class LlmServiceJudge:
    """Asks forge.v1.LlmService/Generate. One channel per rail, opened lazily by gRPC on first use
    and thread-safe (the engine calls from worker threads); closed by `close()` or, failing that,
    when the rail is garbage-collected (the guard is dropped at service close)."""

    def __init__(self, config: JudgeConfig) -> None:
        self.address = config.address or DEFAULT_LLM_ADDRESS
        self.timeout_s = config.timeout_s
        self.max_tokens = config.max_tokens
        channel = config.dialer.blocking_channel(self.address, "llm")
        # The rail runs in a worker thread that carries the request's context: the judge's call
        # joins the request's trace.
        traced = grpc.intercept_channel(channel, telemetry.sync_client_interceptor(self.address))
        self._stub = llm_pb2_grpc.LlmServiceStub(traced)
        self._close = weakref.finalize(self, channel.close)

    def judge(self, text: str) -> JudgeVerdict:
        if not self._close.alive:
            # What the closed channel itself says; an intercepted channel would reach into the
            # closed channel first (grpc crashes the process there).
            raise ValueError("Channel closed")
        request = judge_request(text, self.max_tokens)
        try:
            answer = "".join(r.text for r in self._stub.Generate(request, timeout=self.timeout_s))
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            name = code.name if code is not None else "UNKNOWN"
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise JudgeError(f"LLM service at {self.address}: {name}: {detail}") from None
        return JudgeVerdict(parse_answer(answer))

    def close(self) -> None:
        self._close()


# backend name -> factory.
JUDGE_BACKENDS: dict[str, Callable[[JudgeConfig], Judge]] = {"llm_service": LlmServiceJudge}


class UnknownJudgeBackend(ValueError):
    pass


def make_judge(backend: str, config: JudgeConfig) -> Judge:
    try:
        factory = JUDGE_BACKENDS[backend]
    except KeyError:
        known = ", ".join(JUDGE_BACKENDS) or "none"
        raise UnknownJudgeBackend(f"unknown judge backend {backend!r} (known: {known})") from None
    return factory(config)


@dataclass
class JudgeRail:
    name: str
    judge: Judge
    threshold: float
    kind: str = "judge"

    def scan(self, doc: Normalized) -> list[Hit]:
        verdict = self.judge.judge(doc.text)
        if verdict.harmful_score < self.threshold:
            return []
        return [Hit(category=verdict.category, score=verdict.harmful_score, start=0, end=len(doc.original))]

    def close(self) -> None:
        self.judge.close()
