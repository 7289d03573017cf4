"""The caller's deadline, split across the downstream calls one request makes.

Stages before generation (rails, embedding, search, token counting) each get a share of what is
left, capped; generation gets the rest. Every downstream call therefore ends before the caller's
own deadline, so the router can still answer with a clear status instead of the caller timing out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.common.errors import DeadlineExceeded

# Kept back from every downstream timeout so the router's own answer still reaches the caller.
RESPONSE_MARGIN_S = 0.05


class Deadline:
    def __init__(self, remaining_s: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._expires_at = None if remaining_s is None else clock() + remaining_s

    @property
    def bounded(self) -> bool:
        return self._expires_at is not None

    def remaining(self) -> float | None:
        if self._expires_at is None:
            return None
        return self._expires_at - self._clock()

    def check(self, stage: str) -> None:
        left = self.remaining()
        if left is not None and left <= RESPONSE_MARGIN_S:
            raise DeadlineExceeded(f"deadline exceeded before {stage}")

    def stage_timeout(self, stage: str, share: float, cap_s: float) -> float:
        """Timeout for one stage before generation: `share` of what is left, at most `cap_s`."""
        self.check(stage)
        left = self.remaining()
        if left is None:
            return cap_s
        return max(0.001, min(cap_s, (left - RESPONSE_MARGIN_S) * share))

    def rest(self, stage: str, unbounded_s: float) -> float:
        """Timeout for the last stage: everything that is left."""
        self.check(stage)
        left = self.remaining()
        if left is None:
            return unbounded_s
        return max(0.001, left - RESPONSE_MARGIN_S)
