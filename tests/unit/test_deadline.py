from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common.errors import DeadlineExceeded, Unavailable
from services.router.deadline import RESPONSE_MARGIN_S, Deadline, paced


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_share_what_is_left_and_generation_gets_the_rest() -> None:
    clock = Clock()
    deadline = Deadline(10.0, clock)
    assert deadline.stage_timeout("rail", 0.3, 5.0) == pytest.approx((10 - RESPONSE_MARGIN_S) * 0.3)
    assert deadline.stage_timeout("rail", 0.3, 1.0) == 1.0  # capped
    clock.now += 4
    assert deadline.rest("generate", 600) == pytest.approx(6 - RESPONSE_MARGIN_S)


def test_without_a_caller_deadline_stages_get_their_caps() -> None:
    deadline = Deadline(None, Clock())
    assert not deadline.bounded
    assert deadline.stage_timeout("rail", 0.3, 5.0) == 5.0
    assert deadline.rest("generate", 600) == 600


def test_an_expired_deadline_names_the_stage_it_stopped() -> None:
    clock = Clock()
    deadline = Deadline(1.0, clock)
    clock.now += 1.0
    with pytest.raises(DeadlineExceeded, match="before the Milvus search"):
        deadline.stage_timeout("the Milvus search", 0.3, 5.0)


async def items(*gaps: float) -> AsyncIterator[int]:
    """Yields 0, 1, ... after each gap (a peer that pauses)."""
    for n, gap in enumerate(gaps):
        await asyncio.sleep(gap)
        yield n


def quiet() -> Exception:
    return Unavailable("llm", "no token")


async def test_paced_passes_items_that_come_in_time() -> None:
    assert [n async for n in paced(items(0, 0, 0), 1.0, quiet)] == [0, 1, 2]


async def test_paced_ends_a_stream_whose_peer_goes_quiet() -> None:
    received = []
    with pytest.raises(Unavailable, match="no token"):
        async for n in paced(items(0, 0, 60), 0.05, quiet):
            received.append(n)
    assert received == [0, 1]


async def test_paced_does_not_count_the_consumers_own_time() -> None:
    received = []
    async for n in paced(items(0, 0), 0.05, quiet):
        await asyncio.sleep(0.2)  # the consumer is slow (an output rail check), not the peer
        received.append(n)
    assert received == [0, 1]


async def test_paced_keeps_a_timeout_raised_by_the_stream_itself() -> None:
    async def failing() -> AsyncIterator[int]:
        raise TimeoutError("the stream's own")
        yield 0

    with pytest.raises(TimeoutError, match="the stream's own"):
        _ = [n async for n in paced(failing(), 5.0, quiet)]
