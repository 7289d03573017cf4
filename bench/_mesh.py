"""Shared by the router benchmarks: the Forge mesh as separate `forge serve` processes, as in
production, so the benchmark client is its own process too.

Each service gets a free loopback port, its own log file (stdout and stderr) in the work folder,
and is gated on grpc.health.v1 SERVING. Children are in their own session (a Ctrl-C reaches the
benchmark only, which then stops them in order: routers first) and get SIGTERM should the
benchmark die without cleaning up. `Mesh.stop()` sends SIGTERM, waits for the drain, and kills
only what is still running after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402
from forge.v1 import llm_pb2, llm_pb2_grpc  # noqa: E402
from grpc import aio  # noqa: E402

from services.cli.supervisor import wait_serving  # noqa: E402
from services.common.channels import Dialer  # noqa: E402
from services.common.credentials import dialer_for  # noqa: E402
from services.common.security.keys import KeyStore, ensure_admin_key  # noqa: E402
from services.common.security.settings import SecuritySettings, admin_key_path  # noqa: E402
from services.common.security.tls import ensure_tls_dir  # noqa: E402

# Model and guardrail heads already prepared by the test suite.
DEFAULT_HOME = REPO_ROOT / ".cache" / "forge-test-home"
START_TIMEOUT_S = 300.0
STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the benchmark dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def client_dialer(home: Path = DEFAULT_HOME) -> Dialer:
    """Mutual TLS into services run with the secure defaults under `home` (the CA and
    certificates are made as `forge up` makes them)."""
    ensure_tls_dir(home / "tls")
    return dialer_for("client", SecuritySettings(internal_tls="mtls", tls_dir=str(home / "tls")), home)


def admin_key(home: Path = DEFAULT_HOME) -> str:
    """The admin API key under `home` (made at first use, as `forge up` does)."""
    ensure_admin_key(KeyStore(home / "keys" / "keys.yaml"), admin_key_path(home))
    return admin_key_path(home).read_text().strip()


def router_metadata(key: str, tenant: str) -> tuple[tuple[str, str], ...]:
    """What a caller of the router sends: its API key and the tenant it acts for."""
    return (("authorization", f"Bearer {key}"), ("x-forge-tenant", tenant))


@dataclass
class Service:
    name: str  # a label: "llm", "router", "router-notrace", ...
    kind: str  # the `forge serve` subcommand
    port: int
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Mesh:
    """Forge services as child processes of this benchmark, stopped on exit whatever the way out."""

    def __init__(
        self, workdir: Path, home: Path = DEFAULT_HOME, env: Mapping[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.home = home
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "FORGE_PROFILE": "cpu",
            "FORGE_HOME": str(home),
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        }
        self.services: dict[str, Service] = {}
        # The services run with the secure defaults: mutual TLS inside, API keys on routers.
        self.env.pop("FORGE_AUTH", None)
        self.env.pop("FORGE_INTERNAL_TLS", None)
        self.dialer = client_dialer(home)
        self.api_key = admin_key(home)

    def channel(self, service: Service) -> aio.Channel:
        """A channel to a service as clients reach it: a router's public port in plaintext, the
        others over mutual TLS with the operators' certificate."""
        return (
            self.dialer.channel(service.address, service.kind)
            if service.kind != "router"
            else (aio.insecure_channel(service.address))
        )

    def metadata(self, tenant: str) -> tuple[tuple[str, str], ...]:
        return router_metadata(self.api_key, tenant)

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self, name: str, kind: str, env: Mapping[str, str] | None = None) -> Service:
        port = free_port()
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                "serve",
                kind,
                "--port",
                str(port),
                "--metrics-port",
                "-1",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=REPO_ROOT,
                env={**self.env, **(env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        service = Service(name, kind, port, process, log_path)
        self.services[name] = service
        return service

    async def ready(self, service: Service, timeout_s: float = START_TIMEOUT_S) -> None:
        """SERVING through grpc health, or an error with the log's tail if it exits or times out."""
        dialer = self.dialer if service.kind != "router" else Dialer()
        gate = asyncio.ensure_future(wait_serving(service.address, timeout_s, dialer, service.kind))
        exited = asyncio.ensure_future(service.process.wait())
        try:
            await asyncio.wait({gate, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            if not gate.done():
                gate.cancel()
        if gate.done() and not gate.cancelled() and gate.exception() is None:
            return
        why = (
            f"exited with code {service.process.returncode}"
            if service.process.returncode is not None
            else f"raised {gate.exception()!r}"
        )
        raise RuntimeError(f"{service.name} {why}; log {service.log_path}:\n{service.log_tail()}")

    async def start_backends(self) -> tuple[Service, Service, Service]:
        """llm, embed and guardrails started at once (vLLM takes ~50 s on a CPU)."""
        llm = await self.start("llm", "llm")
        embed = await self.start("embed", "embed")
        guardrails = await self.start("guardrails", "guardrails")
        return llm, embed, guardrails

    def router_env(self, milvus_file: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "FORGE_ROUTER_LLM_ADDRESS": self.services["llm"].address,
            "FORGE_ROUTER_EMBED_ADDRESS": self.services["embed"].address,
            "FORGE_ROUTER_GUARDRAILS_ADDRESS": self.services["guardrails"].address,
            "FORGE_ROUTER_MILVUS_URI": str(milvus_file),
            **(extra or {}),
        }

    async def stop(self) -> None:
        """SIGTERM routers first (they call the others), then the rest; kill after the grace period."""
        routers = [s for s in self.services.values() if s.kind == "router"]
        others = [s for s in self.services.values() if s.kind != "router"]
        for group in (routers, others):
            await asyncio.shield(self._stop_group(group))
        self.services.clear()

    async def _stop_group(self, group: list[Service]) -> None:
        running = [s.process for s in group if s.process.returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), STOP_GRACE_S)
        except TimeoutError:
            for proc in running:
                if proc.returncode is None:
                    print(f"pid {proc.pid} did not stop in {STOP_GRACE_S:.0f}s; killing it", file=sys.stderr)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            await asyncio.gather(*(p.wait() for p in running))


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a router's Milvus Lite server, vLLM's engine core and worker)."""
    root = psutil.Process(pid)
    return [root.pid, *(c.pid for c in root.children(recursive=True))]


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time used so far by these processes, summed over their threads' schedstat (nanoseconds;
    /proc/<pid>/stat only counts 10 ms ticks). Threads that already exited are not counted."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(stat.read_text().split()[0])
    return total / 1e9


async def model_line(llm_address: str, dialer: Dialer) -> str:
    """One line of environment: cores, model and engine, Python."""
    async with dialer.channel(llm_address, "llm") as channel:
        info = await llm_pb2_grpc.LlmServiceStub(channel).GetModelInfo(
            llm_pb2.GetModelInfoRequest(), timeout=10
        )
    load = os.getloadavg()[0]
    return (
        f"env: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), no GPU; "
        f"model {info.model} on {info.engine} (max {info.max_concurrent_sequences} seqs, "
        f"{info.max_context_tokens} ctx); Python {platform.python_version()}; load avg 1 min {load:.2f}"
    )


def install_stop_signals() -> None:
    """SIGTERM cancels the benchmark like Ctrl-C does, so the mesh is stopped on the way out."""
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started
