"""Logging of every Forge process: Forge's own loggers at FORGE_LOG_LEVEL on stderr; the
libraries it uses (vLLM, transformers, Presidio, pymilvus, ...) at WARNING unless asked
(FORGE_THIRD_PARTY_LOG_LEVEL, or FORGE_LOG_LEVEL=DEBUG); known noise dropped."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
THIRD_PARTY_ENV = "FORGE_THIRD_PARTY_LOG_LEVEL"
# Libraries whose INFO lines describe their own internals (recognizers, weights, HTTP requests,
# engine config), not Forge's behaviour.
THIRD_PARTY_LOGGERS = (
    "grpc",
    "presidio-analyzer",
    "vllm",
    "transformers",
    "sentence_transformers",
    "huggingface_hub",
    "httpx",
    "httpcore",
    "urllib3",
    "pymilvus",
    "milvus_lite",
    "spacy",
    "torch",
    "filelock",
    "tldextract",
    "numexpr",
    "opentelemetry",
)
# Presidio loads recognizers for languages Forge never asks for (es, it, pl, ...) and warns about
# each one it then leaves out: ~40 lines a start saying nothing is wrong.
PRESIDIO_UNSUPPORTED_LANGUAGE = "Recognizer not added to registry because language is not supported"


def third_party_level(forge_level: str, environ: Mapping[str, str] | None = None) -> str:
    """FORGE_THIRD_PARTY_LOG_LEVEL when set; DEBUG when Forge itself logs at DEBUG; else WARNING."""
    environ = os.environ if environ is None else environ
    if asked := environ.get(THIRD_PARTY_ENV, "").strip():
        return asked.upper()
    return "DEBUG" if forge_level.upper() == "DEBUG" else "WARNING"


class DropMessages(logging.Filter):
    """Drops records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_PRESIDIO_FILTER = DropMessages(PRESIDIO_UNSUPPORTED_LANGUAGE)


def configure_logging(level: str = "INFO") -> None:
    """Forge's loggers at `level` on stderr; third-party ones at third_party_level()."""
    logging.basicConfig(level=level, stream=sys.stderr, format=FORMAT)
    quiet = third_party_level(level)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    # These two configure their own loggers from the environment when imported (vLLM also in its
    # engine-core process, which inherits it); an explicit setting of the operator's wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", quiet)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", quiet.lower())
    presidio = logging.getLogger("presidio-analyzer")
    if _PRESIDIO_FILTER not in presidio.filters:
        presidio.addFilter(_PRESIDIO_FILTER)
