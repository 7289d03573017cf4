"""The caller's deadline, split across the downstream calls one request makes.

Stages before generation (rails, embedding, search, token counting) each get a share of what is
left, capped; generation gets the rest. Every downstream call therefore ends before the caller's
own deadline, so the router can still answer with a clear status instead of the caller timing out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from typing import TypeVar

from services.common.errors import DeadlineExceeded

T = TypeVar("T")

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


async def paced(
    items: AsyncIterable[T], idle_s: float, on_idle: Callable[[], Exception]
) -> AsyncGenerator[T, None]:
    """`items`, each of which must come within `idle_s` of being asked for, else `on_idle()` is
    raised: a quiet peer ends the stream whatever the total bound. Only the wait for the next item
    counts, not what the consumer does between items. `items` is not closed here: its owner does."""
    iterator = aiter(items)
    while True:
        timer = asyncio.timeout(idle_s)
        try:
            async with timer:
                item = await anext(iterator)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if timer.expired():
                raise on_idle() from None
            raise
        yield item
