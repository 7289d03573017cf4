"""When to retry a failed call, and how long to wait: pure functions, no gRPC calls, no sleeps.

Only failures that say "not now" are retried: UNAVAILABLE (the router or a dependency is down or
restarting) and RESOURCE_EXHAUSTED carrying RetryInfo (the router's admission refusing a session
it may admit later). A RESOURCE_EXHAUSTED without RetryInfo comes from gRPC itself (a message over
the size limit) and would fail again. Everything else (INVALID_ARGUMENT, UNAUTHENTICATED,
PERMISSION_DENIED, DEADLINE_EXCEEDED, INTERNAL, ...) fails the same way twice. Which calls may be
retried at all (idempotent ones, a chat before its first message) is the client's decision.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from forge_client.errors import DeadlineExceeded, ForgeError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first try (1 = never retry). Without a server hint the wait is
    "full jitter": uniform in [0, min(max_backoff_s, initial_backoff_s * multiplier**(n-1))]
    before retry n. With a RetryInfo delay the wait is that delay plus up to `hint_jitter` of it,
    never sooner than the server asked and spread so that clients refused together do not all
    come back together. The call's deadline caps everything: a wait that would end past it is not
    taken and the last error is raised."""

    max_attempts: int = 4
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    hint_jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.hint_jitter < 0:
            raise ValueError("backoffs and jitter must not be negative")


NO_RETRY = RetryPolicy(max_attempts=1)


def retryable(error: ForgeError) -> bool:
    """A failure that may succeed if sent again unchanged."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.retry_after_s is not None


def retry_delay(
    policy: RetryPolicy, error: ForgeError, attempt: int, remaining_s: float | None, rand: float
) -> float | None:
    """Seconds to wait before attempt `attempt + 1` after `error` ended attempt `attempt`, or None
    to give up. `remaining_s` is what is left of the call's deadline (None: no deadline); `rand`
    is uniform in [0, 1)."""
    if attempt >= policy.max_attempts or not retryable(error):
        return None
    if error.retry_after_s is not None:
        delay = error.retry_after_s * (1.0 + policy.hint_jitter * rand)
    else:
        ceiling = min(policy.max_backoff_s, policy.initial_backoff_s * policy.multiplier ** (attempt - 1))
        delay = ceiling * rand
    if remaining_s is not None and delay >= remaining_s:
        return None
    return delay


@dataclass(frozen=True)
class Retrier:
    """The retry loop's surroundings, injectable so that tests need no real time."""

    policy: RetryPolicy
    sleep: Callable[[float], None] = time.sleep
    async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = random.random
    # Told of every retry before its wait: the error, the attempt that failed and the wait.
    on_retry: Callable[[ForgeError, int, float], None] | None = None


class Deadline:
    """What is left of one call's deadline, across all its attempts."""

    def __init__(self, timeout_s: float | None, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._end = None if timeout_s is None else clock() + timeout_s

    def remaining(self) -> float | None:
        return None if self._end is None else max(0.0, self._end - self._clock())

    def check(self) -> float | None:
        """The remaining time for the next attempt; DeadlineExceeded once none is left."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the call's deadline passed before it could be sent again")
        return left


def _next_wait(
    r: Retrier, error: ForgeError, attempt: int, deadline: Deadline, progressed: bool
) -> tuple[int, float]:
    """(the attempt number the failed one counts as, the wait); raises `error` to give up."""
    attempt = 1 if progressed else attempt
    delay = retry_delay(r.policy, error, attempt, deadline.remaining(), r.rand())
    if delay is None:
        raise error
    if r.on_retry is not None:
        r.on_retry(error, attempt, delay)
    return attempt + 1, delay


def call_with_retries(
    r: Retrier,
    timeout_s: float | None,
    attempt_fn: Callable[[float | None], T],
    progressed: Callable[[], bool] = lambda: False,
) -> T:
    """Run `attempt_fn(remaining_timeout)` until it returns or fails for good. `progressed()` is
    asked after a failure: True (the attempt got somewhere, e.g. documents acknowledged) starts
    the attempt count afresh, so a long stream is not given up for blips far apart."""
    deadline = Deadline(timeout_s, r.clock)
    attempt = 1
    while True:
        try:
            return attempt_fn(deadline.check())
        except ForgeError as error:
            attempt, delay = _next_wait(r, error, attempt, deadline, progressed())
        r.sleep(delay)


async def call_with_retries_async(
    r: Retrier,
    timeout_s: float | None,
    attempt_fn: Callable[[float | None], Awaitable[T]],
    progressed: Callable[[], bool] = lambda: False,
) -> T:
    """`call_with_retries` for asyncio."""
    deadline = Deadline(timeout_s, r.clock)
    attempt = 1
    while True:
        try:
            return await attempt_fn(deadline.check())
        except ForgeError as error:
            attempt, delay = _next_wait(r, error, attempt, deadline, progressed())
        await r.async_sleep(delay)
