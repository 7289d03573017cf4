"""Sampling parameters of one generation, as the router and the LLM service both see them, with the
checks a caller's values get. No gRPC here (the proto codec is `codec.py`).

The router checks a caller's parameters itself, with these same rules, before it builds a request:
so a request the LLM service rejects is the router's bug (INTERNAL), never the caller's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.common.errors import InvalidArgument

MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 64


@dataclass(frozen=True)
class SamplingParams:
    """None = the serving side's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # -1 or 0 = off
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def validate(
        self, max_stop_sequences: int = MAX_STOP_SEQUENCES, max_stop_chars: int = MAX_STOP_CHARS
    ) -> None:
        """INVALID_ARGUMENT naming the field and its limit for the first value out of range."""
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidArgument("params.max_tokens", f"must be at least 1, got {self.max_tokens}")
        t = self.temperature
        if t is not None and not (math.isfinite(t) and 0.0 <= t <= MAX_TEMPERATURE):
            raise InvalidArgument("params.temperature", f"must be in [0, {MAX_TEMPERATURE:g}], got {t}")
        p = self.top_p
        if p is not None and not (math.isfinite(p) and 0.0 < p <= 1.0):
            raise InvalidArgument("params.top_p", f"must be in (0, 1], got {p}")
        if self.top_k is not None and self.top_k < -1:
            raise InvalidArgument("params.top_k", f"must be >= 1, or -1/0 to disable, got {self.top_k}")
        if len(self.stop) > max_stop_sequences:
            raise InvalidArgument(
                "params.stop", f"at most {max_stop_sequences} stop strings, got {len(self.stop)}"
            )
        for i, stop in enumerate(self.stop):
            if not stop or len(stop) > max_stop_chars:
                raise InvalidArgument(
                    f"params.stop[{i}]", f"must be 1 to {max_stop_chars} characters, got {len(stop)}"
                )
