"""forge_client's retry decisions and loop, on a fake clock: what is retried, how long it waits
(full jitter; a server's RetryInfo delay as a floor), and the deadline capping it all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import grpc
import pytest

from forge_client.errors import (
    DeadlineExceeded,
    ForgeError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from forge_client.retry import (
    NO_RETRY,
    Retrier,
    RetryPolicy,
    call_with_retries,
    call_with_retries_async,
    retry_delay,
    retryable,
)

POLICY = RetryPolicy(
    max_attempts=4, initial_backoff_s=0.5, max_backoff_s=3.0, multiplier=2.0, hint_jitter=0.2
)
BUSY = ResourceExhausted("all sessions busy", reason="SESSION_LIMIT", retry_after_s=2.0)
DOWN = Unavailable("router unreachable")


def test_only_not_now_failures_are_retryable() -> None:
    assert retryable(DOWN) and retryable(BUSY)
    # gRPC's own RESOURCE_EXHAUSTED (a message over the size limit) has no RetryInfo: fails again.
    assert not retryable(ResourceExhausted("message larger than max"))
    for error in (
        InvalidArgument("top_k: at most 100"),
        Unauthenticated("bad key"),
        PermissionDenied("not your tenant"),
        DeadlineExceeded("deadline"),
        ForgeError("internal", code=grpc.StatusCode.INTERNAL),
    ):
        assert not retryable(error) and retry_delay(POLICY, error, 1, None, 0.5) is None


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    assert retry_delay(POLICY, DOWN, 1, None, 0.0) == 0.0
    assert retry_delay(POLICY, DOWN, 1, None, 0.5) == pytest.approx(0.25)  # ceiling 0.5
    assert retry_delay(POLICY, DOWN, 2, None, 0.5) == pytest.approx(0.5)  # ceiling 1.0
    assert retry_delay(POLICY, DOWN, 3, None, 0.999) == pytest.approx(1.998)  # ceiling 2.0
    assert retry_delay(POLICY, DOWN, 4, None, 0.5) is None  # 4 attempts made: give up
    assert retry_delay(RetryPolicy(max_attempts=10, max_backoff_s=3.0), DOWN, 8, None, 0.5) == 1.5


def test_a_server_delay_is_a_floor_with_jitter_above_it() -> None:
    assert retry_delay(POLICY, BUSY, 1, None, 0.0) == 2.0
    assert retry_delay(POLICY, BUSY, 1, None, 0.5) == pytest.approx(2.2)
    assert retry_delay(POLICY, BUSY, 3, None, 0.999) == pytest.approx(2.0 * 1.1998)


def test_the_deadline_caps_the_wait_and_one_attempt_means_never() -> None:
    assert retry_delay(POLICY, BUSY, 1, 2.5, 0.0) == 2.0
    assert retry_delay(POLICY, BUSY, 1, 1.9, 0.0) is None  # the router asked for more than is left
    assert retry_delay(NO_RETRY, DOWN, 1, None, 0.0) is None


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


Heard = list[tuple[str, int, float]]


def fresh() -> tuple[FakeTime, Heard, list[float | None]]:
    return FakeTime(), [], []


def retrier(time: FakeTime, heard: list[tuple[str, int, float]], policy: RetryPolicy = POLICY) -> Retrier:
    return Retrier(
        policy,
        sleep=time.sleep,
        async_sleep=time.async_sleep,
        clock=lambda: time.now,
        rand=lambda: 0.5,
        on_retry=lambda e, n, d: heard.append((e.code.name, n, d)),
    )


def failing(errors: Sequence[ForgeError], time: FakeTime, timeouts: list[float | None]) -> Callable[..., str]:
    pending = list(errors)

    def attempt(timeout_s: float | None) -> str:
        timeouts.append(timeout_s)
        time.now += 0.1  # each attempt takes a while
        if pending:
            raise pending.pop(0)
        return "ok"

    return attempt


def test_the_loop_waits_as_told_and_hands_each_attempt_what_is_left() -> None:
    time, heard, timeouts = fresh()
    attempt = failing([BUSY, DOWN], time, timeouts)
    assert call_with_retries(retrier(time, heard), 10.0, attempt) == "ok"
    assert [(code, n) for code, n, _ in heard] == [("RESOURCE_EXHAUSTED", 1), ("UNAVAILABLE", 2)]
    assert [wait for *_, wait in heard] == [pytest.approx(2.2), pytest.approx(0.5)]
    assert time.slept == [pytest.approx(2.2), pytest.approx(0.5)]
    assert timeouts == [10.0, pytest.approx(10.0 - 0.1 - 2.2), pytest.approx(10.0 - 0.2 - 2.7)]


def test_the_loop_raises_a_final_error_at_once_and_the_last_when_attempts_run_out() -> None:
    time, heard, timeouts = fresh()
    with pytest.raises(Unauthenticated):
        call_with_retries(retrier(time, heard), 10.0, failing([Unauthenticated("bad key")], time, timeouts))
    assert heard == [] and time.slept == [] and len(timeouts) == 1

    time, _, timeouts = fresh()
    busy = [ResourceExhausted(f"busy {n}", reason="SESSION_LIMIT", retry_after_s=1.0) for n in range(5)]
    with pytest.raises(ResourceExhausted) as last:
        call_with_retries(retrier(time, heard), None, failing(busy, time, timeouts))
    assert last.value.message == "busy 3" and last.value.retry_after_s == 1.0 and len(timeouts) == 4


def test_the_deadline_ends_the_retries_with_the_servers_refusal() -> None:
    time, heard, timeouts = fresh()
    busy = [ResourceExhausted(f"busy {n}", reason="SESSION_LIMIT", retry_after_s=2.0) for n in range(3)]
    with pytest.raises(ResourceExhausted) as last:
        call_with_retries(retrier(time, heard), 3.0, failing(busy, time, timeouts))
    # 0.1 + 2.2 used; 0.7 left is less than the 2.2 s the next wait would take.
    assert last.value.message == "busy 1" and len(timeouts) == 2


def test_progress_starts_the_attempt_count_afresh() -> None:
    time, heard, timeouts = fresh()
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.5)
    attempt = failing([DOWN, DOWN, DOWN], time, timeouts)
    assert call_with_retries(retrier(time, heard, policy), None, attempt, progressed=lambda: True) == "ok"
    assert [n for _, n, _ in heard] == [1, 1, 1]
    with pytest.raises(Unavailable):
        call_with_retries(retrier(time, heard, policy), None, failing([DOWN, DOWN], time, timeouts))


async def test_the_async_loop_is_the_same_loop() -> None:
    time, heard, timeouts = fresh()
    sync_attempt = failing([DOWN, BUSY], time, timeouts)

    async def attempt(timeout_s: float | None) -> str:
        await asyncio.sleep(0)
        return sync_attempt(timeout_s)

    assert await call_with_retries_async(retrier(time, heard), 30.0, attempt) == "ok"
    assert time.slept == [pytest.approx(0.25), pytest.approx(2.2)]

    async def refused(timeout_s: float | None) -> str:
        raise InvalidArgument("messages: must not be empty", field="messages")

    with pytest.raises(InvalidArgument):
        await call_with_retries_async(retrier(time, heard), 30.0, refused)
