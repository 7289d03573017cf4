"""What shared admission adds to a Chat: taking and giving back a session slot in process
(`AdmissionController`) against through Redis (`SharedAdmissionController`, a real redis-server on
loopback), in one run, same limit and tenant. A Chat waits for the slot before anything else, so
the slot's p50 difference is what Redis adds per Chat (the release runs after the answer, off its
path, and is timed apart). Sequential sessions, then `concurrency` at once.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services.cli.redis_server import start_redis
from services.common.config import AdmissionConfig
from services.router.admission import AdmissionController
from services.router.shared_admission import SharedAdmissionController, SharedAdmissionSettings
from tests.helpers import free_port

TARGET_ADDED_P50_MS = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class Timings:
    enter_ms: list[float]
    exit_ms: list[float]


async def _time_sessions(controller: AdmissionController, sessions: int, concurrency: int) -> Timings:
    enter_ms: list[float] = []
    exit_ms: list[float] = []

    async def one(tenant: str) -> None:
        started = time.perf_counter()
        session = controller.session(tenant)
        await session.__aenter__()
        entered = time.perf_counter()
        await session.__aexit__(None, None, None)
        enter_ms.append((entered - started) * 1000)
        exit_ms.append((time.perf_counter() - entered) * 1000)

    for start in range(0, sessions, concurrency):
        await asyncio.gather(*(one(f"t{i % 4}") for i in range(start, min(sessions, start + concurrency))))
    return Timings(enter_ms, exit_ms)


async def measure(sessions: int = 2000, concurrency: int = 8) -> list[tuple[str, int, Timings]]:
    config = AdmissionConfig(max_sessions=64, max_sessions_per_tenant=32)
    results = []
    with tempfile.TemporaryDirectory(prefix="forge-bench-redis-") as tmp:
        redis = start_redis(free_port(), Path(tmp))
        try:
            shared = SharedAdmissionController(
                config, SharedAdmissionSettings(url=redis.url, replica_id="bench", replicas=1)
            )
            await shared.start()
            try:
                for n in (1, concurrency):
                    await _time_sessions(shared, 100, n)  # warm: connections, the scripts loaded
                    results.append(
                        ("in process", n, await _time_sessions(AdmissionController(config), sessions, n))
                    )
                    results.append(("Redis", n, await _time_sessions(shared, sessions, n)))
            finally:
                await shared.close()
        finally:
            redis.stop()
    return results


def report(results: list[tuple[str, int, Timings]]) -> None:
    print("\n# Admission path: in process vs shared through Redis (loopback), per session")
    print(
        "| admission | concurrent | slot taken p50 ms | p99 ms | added p50 ms vs in process | release p50 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    base: dict[int, float] = {}
    added_one_at_a_time = 0.0
    for name, concurrency, t in results:
        p50 = percentile(t.enter_ms, 50)
        if name == "in process":
            base[concurrency] = p50
        added = p50 - base.get(concurrency, p50)
        if concurrency == 1:
            added_one_at_a_time = max(added_one_at_a_time, added)
        print(
            f"| {name} | {concurrency} | {p50:.3f} | {percentile(t.enter_ms, 99):.3f} | "
            f"{added:+.3f} ms | {percentile(t.exit_ms, 50):.3f} ms |"
        )
    verdict = "meets" if added_one_at_a_time <= TARGET_ADDED_P50_MS else "MISSES"
    print(
        f"target: Redis adds <= {TARGET_ADDED_P50_MS:g} ms p50 per Chat (one at a time): "
        f"{added_one_at_a_time:.3f} ms ({verdict}); concurrent arrivals queue on the router's one "
        "event loop, which runs every claim's client-side work"
    )


if __name__ == "__main__":
    report(asyncio.run(measure()))
