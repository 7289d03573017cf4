"""Replica choice and failover of the router's LLM pool, with stand-ins for the replicas (two real
replicas are exercised in tests/integration/test_llm_replicas.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import pytest

from services.common.errors import ResourceExhausted, Unavailable
from services.router.clients.llm_pool import LlmPool, parse_addresses
from services.router.ports import (
    FinishReason,
    Generated,
    GenerateRequest,
    Message,
    ModelInfo,
    Priority,
    Sampling,
)


@dataclass
class FakeReplica:
    """An `Llm` replica: streams `tokens`, or fails before or after the first one."""

    name: str
    fail_before: Exception | None = None
    fail_after_first: Exception | None = None
    served: int = 0
    gate: asyncio.Event | None = None
    started: asyncio.Queue[str] | None = None  # told of each generation that starts
    tokens: list[str] = field(default_factory=lambda: ["a", "b"])

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Generated, None]:
        if self.fail_before is not None:
            raise self.fail_before
        self.served += 1
        if self.started is not None:
            self.started.put_nowait(self.name)
        for i, token in enumerate(self.tokens):
            if i == 1 and self.fail_after_first is not None:
                raise self.fail_after_first
            if self.gate is not None:
                await self.gate.wait()
            yield Generated(token, FinishReason.STOP if i == len(self.tokens) - 1 else None)

    async def count_tokens(self, messages: Sequence[Message], timeout_s: float) -> int:
        if self.fail_before is not None:
            raise self.fail_before
        return 7

    async def count_text_tokens(self, text: str, timeout_s: float) -> int:
        return await self.count_tokens([], timeout_s)

    async def model_info(self, timeout_s: float) -> ModelInfo:
        return ModelInfo("scripted-model", 2048)


@dataclass
class FakeChannel:
    address: str
    closed: bool = False

    async def close(self) -> None:
        self.closed = True


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def pool(fakes: dict[str, FakeReplica], clock: Clock | None = None) -> LlmPool[FakeChannel]:
    return LlmPool(
        list(fakes),
        open_channel=FakeChannel,
        make_client=lambda channel: fakes[channel.address],
        cooldown_s=5,
        clock=clock or Clock(),
    )


REQUEST = GenerateRequest((), Sampling(), Priority.INTERACTIVE, "r", 10)


async def run(p: LlmPool[FakeChannel]) -> str:
    return "".join([g.text async for g in p.generate(REQUEST)])


def test_addresses_are_a_comma_separated_list() -> None:
    assert parse_addresses(" a:1, b:2 ,,") == ["a:1", "b:2"]


async def test_new_sessions_go_to_the_least_loaded_replica() -> None:
    gate, started = asyncio.Event(), asyncio.Queue[str]()
    fakes = {
        "a": FakeReplica("a", gate=gate, started=started),
        "b": FakeReplica("b", gate=gate, started=started),
    }
    p = pool(fakes)
    first = asyncio.create_task(run(p))
    one = await started.get()
    second = asyncio.create_task(run(p))
    other = await started.get()
    assert {one, other} == {"a", "b"}, "the second session must go to the idle replica"
    assert sorted(r.inflight for r in p.replicas) == [1, 1]
    gate.set()
    assert list(await asyncio.gather(first, second)) == ["ab", "ab"]
    assert (fakes["a"].served, fakes["b"].served) == (1, 1)


async def test_a_replica_down_before_the_first_token_is_skipped_for_the_cooldown() -> None:
    clock = Clock()
    fakes = {"a": FakeReplica("a", fail_before=Unavailable("llm", "refused")), "b": FakeReplica("b")}
    p = pool(fakes, clock)
    for _ in range(4):
        assert await run(p) == "ab"
    assert fakes["b"].served == 4
    assert [r.failures for r in p.replicas] == [1, 0], "after one failure 'a' waits out its cooldown"
    fakes["a"].fail_before = None
    clock.now = 6  # cooldown over: 'a' is tried again and serves
    await run(p)
    await run(p)
    assert fakes["a"].served == 1, "idle replicas tied for least load take turns"


async def test_all_replicas_down_is_unavailable_naming_them() -> None:
    down = Unavailable("llm", "refused")
    p = pool({"a": FakeReplica("a", fail_before=down), "b": FakeReplica("b", fail_before=down)})
    with pytest.raises(Unavailable, match="tried a, b"):
        await run(p)


async def test_full_replicas_are_tried_in_turn_then_the_overload_is_reported() -> None:
    full = ResourceExhausted("LLM_CAPACITY", "full", 2.0)
    fakes = {"a": FakeReplica("a", fail_before=full), "b": FakeReplica("b")}
    p = pool(fakes)
    assert await run(p) == "ab"
    assert all(r.failures == 0 for r in p.replicas), "a full replica is not broken"
    fakes["b"].fail_before = full
    with pytest.raises(ResourceExhausted) as err:
        await run(p)
    assert err.value.reason == "LLM_CAPACITY"


async def test_a_stream_that_already_produced_text_is_not_moved() -> None:
    fakes = {"a": FakeReplica("a", fail_after_first=Unavailable("llm", "died")), "b": FakeReplica("b")}
    p = pool(fakes)
    results = []
    for _ in range(2):
        try:
            results.append(await run(p))
        except Unavailable:
            results.append("lost mid-stream")
    # Both idle: 'a' takes the first turn and dies mid-stream, which is not retried elsewhere.
    assert results == ["lost mid-stream", "ab"] and fakes["b"].served == 1


async def test_other_calls_fail_over_too() -> None:
    fakes = {"a": FakeReplica("a", fail_before=Unavailable("llm", "refused")), "b": FakeReplica("b")}
    p = pool(fakes)
    assert [await p.count_tokens([], 1) for _ in range(3)] == [7, 7, 7]
