"""The router's readiness logic (the real watches over gRPC are in
tests/integration/test_router_readiness.py): what it waits for, when it is ready, what a
dependency going down afterwards changes, and an LLM with several replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from services.router.readiness import MILVUS, NOT_ANSWERED, Readiness, Report, follow
from services.router.settings import RouterSettings
from tests.helpers import wait_until

WATCHED = ("llm", "embed", "guardrails")


def readiness(required: tuple[str, ...] = WATCHED) -> tuple[Readiness, list[tuple[str, bool]]]:
    changes: list[tuple[str, bool]] = []
    r = Readiness(WATCHED, required, lambda d, up: changes.append((d, up)))
    return r, changes


async def test_waits_for_every_required_dependency_and_milvus_then_serves() -> None:
    r, _ = readiness()
    waiting = asyncio.create_task(r.wait())
    assert r.waiting_for() == ["llm", "embed", "guardrails", MILVUS]
    r.report("llm", "llm", True, "SERVING")
    r.report("guardrails", "guardrails", True, "SERVING")
    r.report("embed", "embed", False, "NOT_SERVING")  # listening, still loading
    r.opened()
    await asyncio.sleep(0)
    assert not waiting.done() and not r.ready
    assert r.waiting_for() == ["embed"]
    assert r.describe_waits() == "embed (NOT_SERVING)"
    r.report("embed", "embed", True, "SERVING")
    await asyncio.wait_for(waiting, 1)
    assert r.ready and r.waiting_for() == []


async def test_a_dependency_that_goes_down_after_start_shows_but_the_router_stays_ready() -> None:
    r, changes = readiness()
    for d in WATCHED:
        r.report(d, d, True, "SERVING")
    r.opened()
    await asyncio.wait_for(r.wait(), 1)
    changes.clear()
    r.report("embed", "embed", False, "UNAVAILABLE: connection refused")
    assert changes == [("embed", False)]
    assert r.ready and r.waiting_for() == []
    state = r.dependencies()["embed"]
    assert not state.serving and state.detail == "UNAVAILABLE: connection refused"
    r.report("embed", "embed", False, "UNAVAILABLE: connection refused")  # no change, no event
    r.report("embed", "embed", True, "SERVING")
    assert changes == [("embed", False), ("embed", True)]


def test_announce_publishes_every_watched_dependency_down_at_start() -> None:
    r, changes = readiness()
    r.announce()
    assert changes == [(d, False) for d in WATCHED]
    assert {d: s.detail for d, s in r.dependencies().items()} == dict.fromkeys(WATCHED, NOT_ANSWERED)


def test_llm_is_up_while_at_least_one_replica_is() -> None:
    r, changes = readiness()
    r.report("llm", "10.0.0.1:50052", False, "NOT_SERVING")
    r.report("llm", "10.0.0.2:50052", True, "SERVING")
    assert r.is_up("llm") and changes == [("llm", True)]
    assert r.dependencies()["llm"].detail == (
        "1 of 2 replicas serving (10.0.0.1:50052: NOT_SERVING; 10.0.0.2:50052: SERVING)"
    )
    r.report("llm", "10.0.0.2:50052", False, "UNAVAILABLE: connection reset")
    assert not r.is_up("llm") and changes[-1] == ("llm", False)
    r.report("llm", "10.0.0.1:50052", True, "SERVING")
    assert r.is_up("llm")
    r.forget("llm", "10.0.0.1:50052")  # gone from DNS: it no longer counts
    assert not r.is_up("llm")


async def test_only_the_required_dependencies_are_waited_for() -> None:
    r, _ = readiness(required=("llm",))
    r.report("llm", "llm", True, "SERVING")
    r.opened()
    await asyncio.wait_for(r.wait(), 1)
    assert r.ready and not r.is_up("embed")


@pytest.mark.parametrize(
    ("settings", "required"),
    [
        ({}, ("llm", "embed", "guardrails")),
        ({"guardrails_enabled": False}, ("llm", "embed")),
        ({"readiness_dependencies": "llm, guardrails"}, ("llm", "guardrails")),
        ({"readiness_dependencies": ""}, ()),
    ],
)
def test_settings_say_which_dependencies_are_waited_for(
    settings: dict[str, object], required: tuple[str, ...]
) -> None:
    assert RouterSettings.model_validate(settings).required_dependencies() == required


def test_an_unknown_dependency_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="milvus"):
        RouterSettings(readiness_dependencies="llm,milvus")


class Sources:
    """Replicas behind a DNS name, as the pool resolves them; each watch reports and then waits."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.watching: set[str] = set()

    async def current(self) -> Mapping[str, str]:
        return {n: n for n in self.names}

    async def watch(self, channel: str, report: Report) -> None:
        self.watching.add(channel)
        try:
            report(True, "SERVING")
            await asyncio.Event().wait()
        finally:
            self.watching.discard(channel)


async def until(condition: Callable[[], bool], what: str) -> None:
    """The watches run as tasks: poll what they did until it holds."""
    await wait_until(condition, 5, what)


async def test_follow_watches_replicas_as_they_come_and_go() -> None:
    r, _ = readiness()
    sources = Sources(["a:1", "b:1"])
    task = asyncio.create_task(follow(r, "llm", sources.current, sources.watch, refresh_every_s=0.01))
    try:
        await until(lambda: sources.watching == {"a:1", "b:1"}, "both watched")
        assert r.dependencies()["llm"].detail.startswith("2 of 2 replicas serving")
        sources.names = ["b:1"]
        await until(lambda: sources.watching == {"b:1"}, "the gone replica's watch to end")
        assert r.dependencies()["llm"].detail == "SERVING"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sources.watching == set(), "cancelling the follow ends every watch"
