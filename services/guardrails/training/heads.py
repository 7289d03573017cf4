"""The two classifier heads, trained at build time and cached under FORGE_HOME:

- injection: TF-IDF (word 1-2 grams + char 3-5 grams) + logistic regression on S-Labs (MIT) rows
  plus templated hard negatives;
- harm: all-MiniLM-L6-v2 sentence embeddings + logistic regression on Do-Not-Answer (Apache-2.0)
  harmful questions vs. a fixed sample of S-Labs benign rows plus the hard negatives.

Training is deterministic (fixed seeds, sorted inputs), so `forge guardrails train` rebuilds the
same artefact from the same packages.
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
from services.guardrails.training.hard_negatives import hard_negatives

log = logging.getLogger(__name__)

ARTEFACT_VERSION = "heads-v1"
HARM_BENIGN_SAMPLE = 1200
HARD_NEGATIVE_WEIGHT = 5.0
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


class InjectionHead:
    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def score(self, texts: list[str]) -> Scores:
        return np.asarray(self.pipeline.predict_proba(texts)[:, 1], dtype=np.float64)


class HarmHead:
    def __init__(self, model: Any, embed: Embed) -> None:
        self.model = model
        self.embed = embed

    def score(self, texts: list[str]) -> Scores:
        return np.asarray(self.model.predict_proba(self.embed(texts))[:, 1], dtype=np.float64)


def train_injection() -> tuple[Any, HeadInfo]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    started = time.perf_counter()
    data = sources.slabs()
    negatives = hard_negatives()
    texts = data.texts + negatives
    labels = data.labels + [0] * len(negatives)
    weights = np.ones(len(texts))
    weights[len(data.texts) :] = HARD_NEGATIVE_WEIGHT
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
        TfidfVectorizer(
            analyzer="char_wb", ngram_range=(3, 5), min_df=3, sublinear_tf=True, max_features=200_000
        ),
    )
    pipeline = make_pipeline(features, LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced"))
    pipeline.fit(texts, labels, logisticregression__sample_weight=weights)
    info = HeadInfo(
        name="injection",
        features="tfidf word1-2 + char_wb3-5",
        sources=["s-labs", "authored hard negatives"],
        positives=sum(labels),
        negatives=len(labels) - sum(labels),
        train_seconds=round(time.perf_counter() - started, 2),
    )
    return pipeline, info


def train_harm(embed: Embed) -> tuple[Any, HeadInfo]:
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    positives = sources.donotanswer()
    benign = sorted(sources.slabs().negatives())
    negatives = random.Random(0).sample(benign, HARM_BENIGN_SAMPLE) + hard_negatives()
    vectors = np.vstack([embed(positives), embed(negatives)])
    labels = [1] * len(positives) + [0] * len(negatives)
    weights = np.ones(len(labels))
    weights[-len(hard_negatives()) :] = HARD_NEGATIVE_WEIGHT
    model = LogisticRegression(C=2.0, max_iter=2000, class_weight="balanced")
    model.fit(vectors, labels, sample_weight=weights)
    info = HeadInfo(
        name="harm",
        features="all-MiniLM-L6-v2 embeddings",
        sources=["donotanswer", "s-labs (benign sample)", "authored hard negatives"],
        positives=len(positives),
        negatives=len(negatives),
        train_seconds=round(time.perf_counter() - started, 2),
    )
    return model, info


@dataclass
class HeadStore:
    """The artefact cache: <FORGE_HOME>/guardrails/heads-v1/{injection,harm}.joblib + meta.json."""

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
