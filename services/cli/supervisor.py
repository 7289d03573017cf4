"""`forge up`: run each service as its own process, gate on gRPC health, restart the ones that
crash (with backoff), and stop them all cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.channels import PLAINTEXT, Dialer

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# A child that ran this long before crashing is restarted without delay.
STABLE_RUN_S = 60.0


PR_SET_PDEATHSIG = 1


def _die_with_supervisor() -> None:
    """Runs in the child before exec: on Linux the child gets SIGTERM when the supervisor dies,
    even by SIGKILL, so no service outlives `forge up`."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class ChildSpec:
    service: str
    host: str
    port: int
    metrics_port: int
    # Variables for this service only, on top of the supervisor's (e.g. its MPS memory limit).
    env: dict[str, str] = field(default_factory=dict)
    # How the supervisor reaches its health (mutual TLS for llm, embed and guardrails).
    health_dialer: Dialer = PLAINTEXT

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            f"services.{self.service}",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 1.0
    serving: asyncio.Event = field(default_factory=asyncio.Event)


async def wait_serving(address: str, timeout_s: float, dialer: Dialer = PLAINTEXT, service: str = "") -> None:
    """Block until the server at `address` reports SERVING through grpc.health.v1 Watch."""
    async with dialer.channel(address, service) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                call = stub.Watch(
                    health_pb2.HealthCheckRequest(service=""), timeout=max(0.1, deadline - time.monotonic())
                )
                async for reply in call:
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except aio.AioRpcError as err:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{address} not SERVING after {timeout_s:.0f}s ({err.code().name})"
                    ) from err
                # Not listening yet: wait for the channel to connect instead of spinning.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(channel.channel_ready(), max(0.1, deadline - time.monotonic()))


class Supervisor:
    def __init__(
        self,
        specs: list[ChildSpec],
        env: dict[str, str],
        start_timeout_s: float = 300.0,
        stop_grace_s: float = 15.0,
    ) -> None:
        self.children = [Child(spec) for spec in specs]
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        self._stopping.set()

    async def _spawn(self, child: Child) -> None:
        child.serving.clear()
        child.process = await asyncio.create_subprocess_exec(
            *child.spec.command(),
            env={**self.env, **child.spec.env},
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
            preexec_fn=_die_with_supervisor,
        )
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.spec.service, child.process.pid)

    async def _watch(self, child: Child) -> None:
        """Keep one child running until stop is requested."""
        while not self._stopping.is_set():
            await self._spawn(child)
            assert child.process is not None
            address = f"{child.spec.host}:{child.spec.port}"
            gate = asyncio.create_task(
                wait_serving(address, self.start_timeout_s, child.spec.health_dialer, child.spec.service)
            )
            exited = asyncio.create_task(child.process.wait())
            stop = asyncio.create_task(self._stopping.wait())
            await asyncio.wait({gate, exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if gate.done() and gate.exception() is None:
                child.serving.set()
                log.info("%s SERVING on %s", child.spec.service, address)
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in (gate, stop):
                task.cancel()
            if self._stopping.is_set():
                return
            ran_s = time.monotonic() - child.started_at
            child.backoff_s = 1.0 if ran_s > STABLE_RUN_S else min(MAX_BACKOFF_S, child.backoff_s * 2)
            child.restarts += 1
            log.warning(
                "%s exited with code %s after %.0fs; restarting in %.0fs",
                child.spec.service,
                child.process.returncode,
                ran_s,
                child.backoff_s,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), child.backoff_s)

    async def _stop_children(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), self.stop_grace_s)
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    log.warning("pid %d did not drain in %.0fs; killing it", proc.pid, self.stop_grace_s)
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in running))

    async def run(self, on_all_serving: asyncio.Event | None = None) -> None:
        watchers = [asyncio.create_task(self._watch(c)) for c in self.children]

        async def all_serving() -> None:
            await asyncio.gather(*(c.serving.wait() for c in self.children))
            if on_all_serving is not None:
                on_all_serving.set()

        ready = asyncio.create_task(all_serving())
        await self._stopping.wait()
        ready.cancel()
        await self._stop_children()
        await asyncio.gather(*watchers, return_exceptions=True)


def child_env(profile: str, home: str) -> dict[str, str]:
    env = dict(os.environ)
    env["FORGE_PROFILE"] = profile
    env["FORGE_HOME"] = home
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
