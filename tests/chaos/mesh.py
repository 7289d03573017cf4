"""`forge up` as an operator runs it, in its own process: its console (stdout) read line by line,
the services' logs (stderr) in a file, and what the chaos rounds need from outside: each service's
process (found with psutil among the supervisor's children), the vLLM engine process among the
LLM service's children, every service's grpc health and the router's dependency entries, the
router's GetCapacity, and every process the mesh ever ran (to find any left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil
from forge.v1 import router_pb2, router_pb2_grpc
from grpc import StatusCode, aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.ports import port_free
from services.common.channels import Dialer
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_HTTP_PORTS, DEFAULT_METRICS_PORTS
from tests.helpers import REPO_ROOT, admin_key, bearer, mesh_dialer

SERVICES = ("llm", "embed", "guardrails", "router")
BACKENDS = ("llm", "embed", "guardrails")
# The router's per-dependency health entries, "dependency/<name>" (issue 13, item 1). Milvus has
# none (the router opens it rather than watching it): a Milvus round proves it back with a Search.
DEPENDENCIES = ("llm", "embed", "guardrails")
PROBE_TIMEOUT_S = 3.0
SERVING = "SERVING"
MISSING = "NOT_FOUND"  # the health service has no such entry
READY_LINE = "Ctrl-C stops the mesh"
STOPPED_LINE = "Forge stopped"
STOP_TIMEOUT_S = 90.0


def free_port_offset() -> int:
    """An offset that puts all of the mesh's ports (gRPC, metrics, the gateway's HTTP) on free ports."""
    ports = [*DEFAULT_GRPC_PORTS.values(), *DEFAULT_METRICS_PORTS.values(), *DEFAULT_HTTP_PORTS.values()]
    for offset in range(1000, 9000, 37):
        if all(port_free("127.0.0.1", p + offset) for p in ports):
            return offset
    raise RuntimeError("no port offset with all the mesh's ports free")


@dataclass(frozen=True)
class ConsoleLine:
    at: float  # time.monotonic()
    text: str


class ForgeUp:
    """One `forge up` (the real supervisor) and the four services it runs."""

    def __init__(
        self, workdir: Path, home: Path, env: Mapping[str, str] | None = None, start_timeout_s: float = 300
    ) -> None:
        self.workdir = workdir
        self.home = home
        self.env = {**os.environ, "FORGE_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
        # The services' logs and the supervisor's own lines on forge up's stderr (our log file), as
        # the rounds' reports quote them; a quiet forge up keeps them in FORGE_HOME/logs only.
        self.env["FORGE_UP_VERBOSE"] = "1"
        # The secure defaults, as a user gets them: mutual TLS inside, API keys on the router.
        self.env.pop("FORGE_AUTH", None)
        self.env.pop("FORGE_INTERNAL_TLS", None)
        self.start_timeout_s = start_timeout_s
        self.offset = 0
        self.log_path = workdir / "forge-up.log"
        self.console: list[ConsoleLine] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()
        self._dialer: Dialer | None = None
        self._admin: tuple[tuple[str, str], ...] = ()
        # Every process ever seen under the supervisor, by (pid, start time): none may outlive its
        # place in the tree.
        self.seen: dict[tuple[int, float], psutil.Process] = {}
        self._watch: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self, ready_timeout_s: float = 900) -> None:
        self.offset = free_port_offset()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.cli",
                "up",
                "--port-offset",
                str(self.offset),
                "--start-timeout",
                str(self.start_timeout_s),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,  # a file: a pipe nobody reads would block the services' logging
                cwd=REPO_ROOT,
                env=self.env,
            )
        self._reader = asyncio.create_task(self._read_console())
        self._watch = asyncio.create_task(self._watch_tree())
        await self.wait_console(READY_LINE, ready_timeout_s)
        self._dialer = mesh_dialer("client", self.home)
        self._admin = bearer(admin_key(self.home))

    async def stop(self) -> int | None:
        """Ctrl-C, as an operator stops it; then make sure nothing it ran is left (killing what
        is: only processes this mesh started). Returns forge up's exit code (None: killed)."""
        if self._watch is not None:
            self._watch.cancel()
        proc = self.proc
        code: int | None = None
        if proc is not None and proc.returncode is None:
            self.snapshot()
            proc.send_signal(signal.SIGINT)
            try:
                code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        elif proc is not None:
            code = proc.returncode
        for leftover in self.leftovers(everything=True):
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        if self._reader is not None:
            self._reader.cancel()
        return code

    async def _read_console(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.console.append(ConsoleLine(time.monotonic(), line.decode(errors="replace").rstrip()))
            self._new_line.set()
        self._new_line.set()

    async def wait_console(self, needle: str, timeout_s: float, since: int = 0) -> ConsoleLine:
        """The first console line from index `since` on that contains `needle`."""
        deadline = time.monotonic() + timeout_s
        seen = since
        while True:
            for line in self.console[seen:]:
                if needle in line.text:
                    return line
            seen = len(self.console)
            assert self.proc is not None
            if self.proc.returncode is not None or (self._reader is not None and self._reader.done()):
                raise RuntimeError(f"forge up ended before {needle!r}:\n{self.tail()}")
            self._new_line.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {needle!r} from forge up in {timeout_s:.0f}s:\n{self.tail()}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), left)

    def tail(self, lines: int = 30) -> str:
        """The console's and the log's last lines, for a failure message."""
        console = "\n".join(c.text for c in self.console[-lines:])
        try:
            log = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            log = ""
        return f"--- forge up console ---\n{console}\n--- services' log ({self.log_path}) ---\n{log}"

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def supervisor_lines(self, since: int) -> list[str]:
        """What forge up itself wrote to stderr from byte `since` on: services started, SERVING,
        restarted and why, leftovers killed (the services' own logs are in the same stream)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except OSError:
            return []
        said: list[str] = []
        restart = False  # a restart message is followed by the service's last log lines, indented
        for line in text.splitlines():
            if " services.cli.supervisor: " in line or " — restart " in line:
                said.append(line)
                restart = " — restart " in line
            elif restart and line.startswith("    "):
                said.append(line)
            else:
                restart = False
        return said

    # --- processes --------------------------------------------------------------------------

    def supervisor(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def service(self, name: str) -> psutil.Process | None:
        """The supervisor's child running `name` now (None while it is being restarted)."""
        with contextlib.suppress(psutil.Error):
            for child in self.supervisor().children():
                with contextlib.suppress(psutil.Error):
                    if _runs(child.cmdline(), name) and child.status() != psutil.STATUS_ZOMBIE:
                        return child
        return None

    def engine(self) -> psutil.Process | None:
        """The vLLM engine core process among the LLM service's children."""
        llm = self.service("llm")
        if llm is None:
            return None
        with contextlib.suppress(psutil.Error):
            for child in llm.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                        return child
        return None

    def tree(self) -> list[psutil.Process]:
        try:
            return self.supervisor().children(recursive=True)
        except psutil.Error:
            return []

    def snapshot(self) -> None:
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault((p.pid, p.create_time()), p)

    async def _watch_tree(self) -> None:
        # Often enough to see a process that lives a second (an engine started and orphaned).
        while True:
            self.snapshot()
            await asyncio.sleep(0.25)

    def leftovers(self, everything: bool = False) -> list[psutil.Process]:
        """Processes the mesh ran that are no longer under the supervisor's current children (with
        `everything`: any at all) but still run. Zombies hold no memory: not counted."""
        self.snapshot()
        now = set() if everything else {(p.pid, _started(p)) for p in self.tree()}
        left = []
        for key, p in self.seen.items():
            if key in now:
                continue
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
        return left

    # --- health and capacity ----------------------------------------------------------------

    @property
    def dialer(self) -> Dialer | None:
        """Mutual TLS into llm, embed and guardrails, as an operator's tools reach them."""
        return self._dialer

    def address(self, service: str) -> str:
        return f"127.0.0.1:{DEFAULT_GRPC_PORTS[service] + self.offset}"

    def _channel(self, service: str) -> aio.Channel:
        if service == "router":
            return aio.insecure_channel(self.address("router"))
        assert self._dialer is not None
        return self._dialer.channel(self.address(service), service)

    async def check(self, service: str, entry: str = "") -> str:
        """A health entry's status name, NOT_FOUND when there is no such entry, or UNREACHABLE (code)."""
        try:
            async with self._channel(service) as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=entry), timeout=PROBE_TIMEOUT_S
                )
        except aio.AioRpcError as e:
            return MISSING if e.code() == StatusCode.NOT_FOUND else f"UNREACHABLE ({e.code().name})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def health(self) -> dict[str, str]:
        """Every service's own health and the router's dependency entries, at once."""
        probes = {s: (s, "") for s in SERVICES}
        probes.update({f"router dependency/{d}": ("router", f"dependency/{d}") for d in DEPENDENCIES})
        answers = await asyncio.gather(*(self.check(s, e) for s, e in probes.values()))
        return dict(zip(probes, answers, strict=True))

    async def capacity(self) -> router_pb2.GetCapacityResponse:
        async with aio.insecure_channel(self.address("router")) as channel:
            return await router_pb2_grpc.AdminServiceStub(channel).GetCapacity(
                router_pb2.GetCapacityRequest(), metadata=self._admin, timeout=PROBE_TIMEOUT_S
            )


def not_serving(health: Mapping[str, str]) -> dict[str, str]:
    """The entries that are not SERVING; a dependency entry that does not exist is left to
    `missing_entries` (waiting would not make it appear)."""
    return {
        k: v
        for k, v in health.items()
        if v != SERVING and not (k.startswith("router dependency/") and v == MISSING)
    }


def missing_entries(health: Mapping[str, str]) -> list[str]:
    return sorted(k for k, v in health.items() if v == MISSING)


def _runs(cmdline: list[str], service: str) -> bool:
    """`python -m services.<service> ...` (how forge up starts it), or `... serve <service>`."""
    for i, arg in enumerate(cmdline):
        if arg == f"services.{service}" or (arg == "serve" and cmdline[i + 1 : i + 2] == [service]):
            return True
    return False


def _started(p: psutil.Process) -> float:
    try:
        return p.create_time()
    except psutil.Error:
        return -1.0
