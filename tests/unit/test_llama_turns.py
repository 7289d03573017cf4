"""llama.cpp runs one sequence at a time; waiting requests get the context by priority, then FIFO."""

from __future__ import annotations

import asyncio

from services.llm.llama_cpp_engine import _Turns


async def test_waiters_are_served_by_priority_then_arrival() -> None:
    turns = _Turns()
    await turns.acquire(priority=1)  # the running request
    served: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await turns.acquire(priority)
        served.append(name)

    tasks = [
        asyncio.create_task(wait(n, p))
        for n, p in [("batch-1", 1), ("chat-1", 0), ("batch-2", 1), ("chat-2", 0)]
    ]
    await asyncio.sleep(0)  # let every waiter queue up
    assert turns.waiting == 4 and turns.busy
    for _ in tasks:
        turns.release()
        await asyncio.sleep(0)
    assert served == ["chat-1", "chat-2", "batch-1", "batch-2"]
    turns.release()
    assert not turns.busy and turns.waiting == 0


async def test_a_cancelled_waiter_is_skipped() -> None:
    turns = _Turns()
    await turns.acquire(0)
    gone = asyncio.create_task(turns.acquire(0))
    stays = asyncio.create_task(turns.acquire(1))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert turns.waiting == 1
    turns.release()
    await asyncio.wait_for(stays, 1)
    assert turns.busy
