"""`forge up`: run each service as its own process, gate on gRPC health, and keep it running:

- restart a service that exits, that never reports SERVING within its start timeout, or that was
  SERVING and then stopped answering its health check for a long time (frozen);
- back off on a crash loop (exponential, capped; reset after a stable run) and say so plainly on
  the console, with the exit code, its meaning and the service's last log lines;
- reap every process of a service before starting it again and on stop: each service runs in its
  own session, and whatever is left of it (vLLM's engine core, a worker) is killed, so no orphan
  keeps memory or a GPU;
- append each service's log (its stderr) to `<logs_dir>/<service>.log`, a marker line per start,
  and echo it on our stderr only when asked; tell the reporter when a service first serves and
  when a first-start step (model conversion, guardrail training) begins and ends.

Ctrl-C or SIGTERM stops them all: SIGTERM (each drains), the stop grace, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

import psutil
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli import CALLERS_FORK_SUPPORT, FORK_SUPPORT_ENV
from services.common.channels import PLAINTEXT, Dialer

log = logging.getLogger(__name__)

# The exit code of a service whose engine or model died (services.common.server.EXIT_FATAL; not
# imported: the server kit pulls in the whole gRPC stack for one number).
EXIT_FATAL = 3
EXIT_MEANINGS = {1: "failed to start or crashed", EXIT_FATAL: "engine or model died"}
# How the server kit logs fail(reason) (services/common/server.py), for the restart message.
FAILED_LINE = re.compile(r"cannot serve any more: (.*); draining and exiting")
# Log lines kept per service, and how many a restart message repeats.
LOG_TAIL_LINES = 40
LOG_LINES_SHOWN = 5
# Leftover processes of a service that already exited get this long after SIGTERM: nothing is left
# for them to drain (vLLM's engine core ignores SIGTERM anyway), and a restart waits on them.
LEFTOVER_GRACE_S = 1.0
# How long a stopped service's own children get to exit after it before they count as left behind.
ENGINE_EXIT_S = 5.0

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Step:
    """A long first-start step a service logs when it begins and ends."""

    what: str
    begins: re.Pattern[str]
    ends: re.Pattern[str]


# Recognised in the services' logs (services/llm/app.py + prepare.py, services/guardrails/factory.py
# + training/heads.py log these lines); a step also ends when its service serves or exits, so a
# reworded end line costs a late "done", never a step shown for ever.
FIRST_START_STEPS = (
    Step(
        "converting the model (first start only)",
        re.compile(r"no prepared model at .*; preparing it now"),
        re.compile(r"services\.llm\.prepare: model prepared$"),
    ),
    Step(
        "training the guardrail heads (first start only)",
        re.compile(r"no trained heads in .*: training now"),
        re.compile(r"trained guardrail heads into "),
    ),
)


class Reporter(Protocol):
    """Who hears what the supervisor has to say (forge up's console)."""

    def say(self, message: str) -> None:
        """A restart, a failure, a recovery: said plainly."""

    def serving(self, service: str, after_s: float) -> None:
        """`service` reports SERVING for the first time, `after_s` after its start."""

    def step_begun(self, service: str, what: str) -> None: ...

    def step_ended(self, service: str, what: str, took_s: float, finished: bool) -> None:
        """`finished`: the step's own end line was seen (else: it served or exited without one)."""


@dataclass
class SayOnly:
    """A Reporter that passes on what is said and nothing else."""

    say: Callable[[str], None]

    def serving(self, service: str, after_s: float) -> None:
        pass

    def step_begun(self, service: str, what: str) -> None:
        pass

    def step_ended(self, service: str, what: str, took_s: float, finished: bool) -> None:
        pass


def _die_with_supervisor() -> None:
    """Runs in the child before exec: on Linux the child gets SIGTERM when the supervisor dies,
    even by SIGKILL, so no service outlives `forge up`."""
    die_with_parent(signal.SIGTERM)()


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` when the thread that started it ends (its process dying
    included, even by SIGKILL), for what `forge up` starts beside the supervisor (Redis; Milvus,
    whose wrapper stops cleanly on SIGINT only)."""

    def arm() -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return arm


class _ExitProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Tells when the process itself exited. Process.wait() (Python 3.11) also waits for its
    stdout and stderr to close, which never happens while an orphan (vLLM's engine core of a
    SIGKILLed service) still holds them: exactly when the supervisor must act."""

    def __init__(self, exited: asyncio.Event, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self._exited = exited

    def process_exited(self) -> None:
        super().process_exited()
        self._exited.set()


@dataclass(frozen=True)
class RestartPolicy:
    # Seconds a (re)started service may take to report SERVING before it is killed and restarted.
    start_timeout_s: float = 300.0
    # Seconds a SERVING service may go without answering its health check at all (SERVING or not)
    # before it is killed and restarted; 0 = never. Long enough that a pause (a 20 s SIGSTOP, a
    # long GC, a swap storm) is ridden out; short enough that a hung process does not linger.
    liveness_timeout_s: float = 60.0
    # Crash-loop backoff: the first restart waits initial, each quick failure doubles it, up to max.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    # A service that was SERVING this long before it failed starts over at the initial backoff.
    stable_run_s: float = 60.0
    # SIGTERM -> this long to drain -> SIGKILL, on stop and when killing a stuck or frozen service.
    stop_grace_s: float = 15.0

    @property
    def liveness_interval_s(self) -> float:
        """How often a SERVING service's health is checked (also each check's timeout)."""
        return max(0.2, min(5.0, self.liveness_timeout_s / 6))


class Backoff:
    """Delays between restarts of one service: initial, doubled after every quick failure up to
    the cap, back to initial once a run was stable."""

    def __init__(self, initial_s: float, max_s: float, stable_run_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.stable_run_s = stable_run_s
        self._next_s = initial_s

    @classmethod
    def of(cls, policy: RestartPolicy) -> Backoff:
        return cls(policy.backoff_initial_s, policy.backoff_max_s, policy.stable_run_s)

    def next_delay(self, serving_s: float) -> float:
        """The delay before the next start, given how long the last run was SERVING."""
        if serving_s >= self.stable_run_s:
            self._next_s = self.initial_s
        delay = self._next_s
        self._next_s = min(self.max_s, delay * 2)
        return delay


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
    # Services this one waits for before it reports SERVING (the router waits for llm, embed and
    # guardrails): its start timeout counts from when they all serve, so a slow LLM load does not
    # get the router killed as stuck.
    after: tuple[str, ...] = ()
    # The service this child runs (its module, and the name its TLS certificate carries) when
    # `service` names one of several replicas ("router-1"); "" = `service` itself.
    role: str = ""

    @property
    def runs(self) -> str:
        return self.role or self.service

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            f"services.{self.runs}",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    serving_since: float | None = None
    restarts: int = 0
    backoff: Backoff = field(default_factory=lambda: Backoff.of(RestartPolicy()))
    serving: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when the process exits (its returncode is then known), pipes open or not.
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # The last lines the service wrote to stderr (its logs), for the restart message.
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))
    # Why the service said it failed (the server kit's log line), for the restart message.
    failed_reason: str | None = None
    # When the supervisor saw it fail, until it is SERVING again (time.monotonic()).
    down_since: float | None = None
    # When it last answered a liveness health check (time.monotonic()).
    answered_at: float = 0.0
    # Descendants seen while it ran (pid -> create time), to find one that left the session.
    known: dict[int, float] = field(default_factory=dict)
    # The first-start step running now and since when (time.monotonic()).
    step: Step | None = None
    step_since: float = 0.0
    # Whether it has reported SERVING since the supervisor began (first time: the reporter hears).
    served_once: bool = False
    starts: int = 0
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def sid(self) -> int:
        """The session (and process group) id: the service's pid, as it is a session leader."""
        assert self.process is not None
        return self.process.pid


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


def describe_exit(returncode: int, reason: str | None) -> str:
    """ "exited with code 3 (engine or model died: ...)" or "was killed by SIGKILL"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    meaning = EXIT_MEANINGS.get(returncode)
    detail = f"{meaning}: {reason}" if meaning and reason else meaning or reason
    return f"exited with code {returncode}" + (f" ({detail})" if detail else "")


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def session_members(sid: int, known: dict[int, float] | None = None) -> list[psutil.Process]:
    """Every live process of session `sid`, plus the `known` descendants (pid -> create time)
    still alive: what is left of a service."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = proc
    for pid, created in (known or {}).items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                found[pid] = proc
    found.pop(os.getpid(), None)
    return list(found.values())


async def kill_processes(procs: list[psutil.Process], grace_s: float) -> None:
    """SIGTERM (and SIGCONT: a stopped process handles SIGTERM only once resumed), `grace_s` to
    exit, then SIGKILL. Never waits on a child of this process (asyncio reaps those)."""
    if not procs:
        return
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
    _, alive = await asyncio.to_thread(_wait_gone, procs, grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            log.warning("pid %d (%s) ignored SIGTERM for %.0fs; killing it", proc.pid, proc.name(), grace_s)
            proc.kill()
    await asyncio.to_thread(_wait_gone, alive, 5.0)


def _wait_gone(
    procs: list[psutil.Process], timeout_s: float
) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """Poll until the processes are gone (or zombies) without reaping any: psutil.wait_procs would
    waitpid() a child of ours, stealing its exit status from asyncio."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        if not alive or time.monotonic() >= deadline:
            return [p for p in procs if p not in alive], alive
        time.sleep(0.05)


class Supervisor:
    def __init__(
        self,
        specs: list[ChildSpec],
        env: dict[str, str],
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = _say_on_stderr,
        *,
        reporter: Reporter | None = None,
        logs_dir: Path | None = None,
        echo_logs: bool = True,
    ) -> None:
        """`reporter` (else `say` alone) hears what happens; each service's log is appended to
        `logs_dir`/<service>.log when given, and echoed on stderr when `echo_logs`."""
        self.policy = policy or RestartPolicy()
        self.children = [Child(spec, backoff=Backoff.of(self.policy)) for spec in specs]
        self.env = env
        self.reporter: Reporter = reporter or SayOnly(say)
        self.say = self.reporter.say
        self.logs_dir = logs_dir
        self.echo_logs = echo_logs
        self._stopping = asyncio.Event()

    def request_stop(self) -> None:
        self._stopping.set()

    # -- one process ----------------------------------------------------------------------------

    async def _spawn(self, child: Child) -> None:
        child.serving.clear()
        child.serving_since = None
        child.failed_reason = None
        child.known.clear()
        loop = asyncio.get_running_loop()
        exited = child.exited = asyncio.Event()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ExitProtocol(exited, 1 << 20, loop),
            *child.spec.command(),
            env={**self.env, **child.spec.env},
            # Not a pipe: a service whose supervisor died (SIGKILL; it gets SIGTERM) must still be
            # able to announce its drain; a print to a pipe nobody reads raises and cuts it short.
            stdout=asyncio.subprocess.DEVNULL,
            # Its logs: passed on to ours, the last lines kept (logging swallows a broken pipe).
            stderr=asyncio.subprocess.PIPE,
            # Its own session (and process group): Ctrl-C reaches the supervisor only, which stops
            # the services in order, and the whole family of a service can be found and killed.
            start_new_session=True,
            preexec_fn=_die_with_supervisor,
        )
        child.process = asyncio.subprocess.Process(transport, protocol, loop)
        child.started_at = time.monotonic()
        child.starts += 1
        log_file = self._open_log(child, child.process.pid)
        child._readers = [asyncio.create_task(self._read_logs(child, child.process, log_file))]
        log.info("started %s (pid %d)", child.spec.service, child.process.pid)

    def _open_log(self, child: Child, pid: int) -> IO[bytes] | None:
        """The service's log file, opened for appending, with a line marking this start."""
        if self.logs_dir is None:
            return None
        try:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            log_file = (self.logs_dir / f"{child.spec.service}.log").open("ab")
        except OSError as exc:
            log.warning("cannot write %s's log under %s: %s", child.spec.service, self.logs_dir, exc)
            return None
        when = datetime.now().astimezone().isoformat(timespec="seconds")
        marker = f"==== {when} forge up: {child.spec.service} start {child.starts} (pid {pid}) ====\n"
        log_file.write(marker.encode())
        log_file.flush()
        return log_file

    async def _read_logs(
        self, child: Child, process: asyncio.subprocess.Process, log_file: IO[bytes] | None = None
    ) -> None:
        assert process.stderr is not None
        partial = ""
        try:
            with contextlib.suppress(OSError):
                while chunk := await process.stderr.read(65536):
                    if log_file is not None:
                        log_file.write(chunk)
                        log_file.flush()
                    text = chunk.decode(errors="replace")
                    if self.echo_logs:
                        sys.stderr.write(text)
                        sys.stderr.flush()
                    lines = (partial + text).replace("\r", "\n").split("\n")
                    partial = lines.pop()
                    for line in lines:
                        self._log_line(child, line)
        finally:
            if log_file is not None:
                with contextlib.suppress(OSError):
                    log_file.close()

    def _log_line(self, child: Child, line: str) -> None:
        if line.strip():
            child.log_tail.append(line)
        if reason := FAILED_LINE.search(line):
            child.failed_reason = reason.group(1)
        if child.step is not None and child.step.ends.search(line):
            self._end_step(child, finished=True)
        for step in FIRST_START_STEPS:
            if step.begins.search(line):
                self._end_step(child, finished=False)
                child.step, child.step_since = step, time.monotonic()
                self.reporter.step_begun(child.spec.service, step.what)

    def _end_step(self, child: Child, finished: bool) -> None:
        """The step running (if any) is over: its end line came, or the service served or exited."""
        if child.step is not None:
            step, child.step = child.step, None
            took_s = time.monotonic() - child.step_since
            self.reporter.step_ended(child.spec.service, step.what, took_s, finished)

    def _remember_family(self, child: Child) -> None:
        """Note the service's descendants now, so one that left its session is still found."""
        if child.process is None or child.process.returncode is not None:
            return
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(child.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.known[proc.pid] = proc.create_time()

    async def _liveness(self, child: Child) -> float:
        """Return once the SERVING service has not answered a health check for the liveness
        timeout (a frozen or hung process): the seconds it went unanswered."""
        interval = self.policy.liveness_interval_s
        async with child.spec.health_dialer.channel(child.spec.address, child.spec.runs) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answered = time.monotonic()
            while True:
                probed = time.monotonic()
                self._remember_family(child)
                try:
                    # Any answer will do: NOT_SERVING (draining, a dependency down) is alive.
                    await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=interval)
                    answered = child.answered_at = time.monotonic()
                except aio.AioRpcError:
                    if (silent_s := time.monotonic() - answered) >= self.policy.liveness_timeout_s:
                        return silent_s
                # The probe period: one check per interval, however long the last one took.
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - probed)))

    async def _run_once(self, child: Child) -> str | None:
        """Supervise one started process until it exits, is judged stuck or frozen (then killed),
        or stop is requested (None). Returns what happened, for the restart message."""
        process = child.process
        assert process is not None
        spec, policy = child.spec, self.policy
        exited = asyncio.create_task(child.exited.wait())
        stop = asyncio.create_task(self._stopping.wait())
        gate = asyncio.create_task(self._started(child))
        live: asyncio.Task[float] | None = None
        try:
            await asyncio.wait({gate, exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                return None
            if exited.done():
                return await self._exit_description(child)
            if (error := gate.exception()) is not None:
                await self._kill(child)
                if isinstance(error, TimeoutError):
                    return (
                        f"did not report SERVING within {policy.start_timeout_s:.0f} s (stuck starting); "
                        "killed it"
                    )
                return f"could not be health-checked ({type(error).__name__}: {error}); killed it"
            child.serving_since = time.monotonic()
            child.serving.set()
            self._end_step(child, finished=False)
            if not child.served_once:
                child.served_once = True
                self.reporter.serving(spec.service, child.serving_since - child.started_at)
            if child.down_since is not None:
                down_s, child.down_since = child.serving_since - child.down_since, None
                again = f"{spec.service} is SERVING again, {down_s:.0f} s after it failed"
                self.say(f"{again} (restart {child.restarts})")
            self._remember_family(child)
            log.info("%s SERVING on %s", spec.service, spec.address)
            waits: set[asyncio.Future[Any]] = {exited, stop}
            if policy.liveness_timeout_s > 0:
                live = asyncio.create_task(self._liveness(child))
                waits.add(live)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if stop.done():
                return None
            if exited.done():
                return await self._exit_description(child)
            assert live is not None
            silent_s = live.result()
            await self._kill(child)
            return f"stopped answering its health check for {silent_s:.0f} s (frozen?); killed it"
        finally:
            for task in (gate, stop, live):
                if task is not None:
                    task.cancel()
            exited.cancel()

    async def _started(self, child: Child) -> None:
        """Until the child reports SERVING: TimeoutError once it has had the start timeout, counted
        from when the services it waits for all serve."""
        spec = child.spec
        others = [c.serving.wait() for c in self.children if c.spec.service in spec.after]
        await asyncio.gather(*others)
        await wait_serving(spec.address, self.policy.start_timeout_s, spec.health_dialer, spec.runs)

    async def _exit_description(self, child: Child) -> str:
        assert child.process is not None and child.process.returncode is not None
        # Its last lines (why it failed) may still be in the pipe.
        if child._readers:
            await asyncio.wait(child._readers[:1], timeout=1.0)
        return describe_exit(child.process.returncode, child.failed_reason)

    async def _kill(self, child: Child) -> None:
        """Kill a stuck or frozen service with its whole family: SIGTERM, the grace, SIGKILL."""
        self._remember_family(child)
        members = session_members(child.sid, child.known)
        await kill_processes(members, self.policy.stop_grace_s)
        await self._wait_exit(child, 5.0)

    async def _wait_exit(self, child: Child, timeout_s: float) -> None:
        assert child.process is not None
        try:
            await asyncio.wait_for(child.exited.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.exited.wait()

    async def _reap(self, child: Child) -> None:
        """After the service's own process ended: kill whatever is left of it (an orphaned engine
        core, a worker), then let its log readers finish."""
        leftovers = session_members(child.sid, child.known)
        if leftovers and self._stopping.is_set():
            # On a stop the service shut its engine down; the engine's process may still be
            # exiting (vLLM's EngineCore outlives its parent by a moment): not a leftover yet.
            _, leftovers = await asyncio.to_thread(_wait_gone, leftovers, ENGINE_EXIT_S)
        if leftovers:
            names = ", ".join(f"{p.pid}" for p in leftovers)
            log.warning(
                "%s left %d process(es) behind (%s); killing them", child.spec.service, len(leftovers), names
            )
            await kill_processes(leftovers, LEFTOVER_GRACE_S)
        readers, child._readers = child._readers, []
        if readers:
            _, pending = await asyncio.wait(readers, timeout=5.0)
            for task in pending:
                task.cancel()
        self._end_step(child, finished=False)

    async def _stop(self, child: Child) -> None:
        """Stop on request: SIGTERM to the service (it drains and shuts its engine down), the
        grace, SIGKILL to the whole family, then whatever is left."""
        process = child.process
        assert process is not None
        if not child.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
                process.send_signal(signal.SIGCONT)  # a frozen service handles SIGTERM only once resumed
            try:
                await asyncio.wait_for(child.exited.wait(), self.policy.stop_grace_s)
            except TimeoutError:
                log.warning(
                    "%s (pid %d) did not drain in %.0fs; killing it",
                    child.spec.service,
                    process.pid,
                    self.policy.stop_grace_s,
                )
                await kill_processes(session_members(child.sid, child.known), 0.0)
                await child.exited.wait()
        await self._reap(child)

    def _restart_message(self, child: Child, what: str, delay_s: float) -> str:
        lines = list(child.log_tail)[-LOG_LINES_SHOWN:]
        message = f"{child.spec.service} {what} — restart {child.restarts} in {delay_s:g} s"
        if lines:
            message += "; last log lines:\n" + "\n".join(f"    {line}" for line in lines)
        return message

    async def _watch(self, child: Child) -> None:
        """Keep one service running until stop is requested."""
        while not self._stopping.is_set():
            await self._spawn(child)
            what = await self._run_once(child)
            if what is None:
                await self._stop(child)
                return
            if child.down_since is None:  # a failed restart does not reset the outage's start
                child.down_since = time.monotonic()
            serving_s = 0.0 if child.serving_since is None else time.monotonic() - child.serving_since
            await self._reap(child)
            if self._stopping.is_set():
                return
            delay_s = child.backoff.next_delay(serving_s)
            child.restarts += 1
            self.say(self._restart_message(child, what, delay_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def run(self, on_all_serving: asyncio.Event | None = None) -> None:
        watchers = [
            asyncio.create_task(self._watch(c), name=f"watch-{c.spec.service}") for c in self.children
        ]
        for watcher in watchers:
            watcher.add_done_callback(_log_failure)

        async def all_serving() -> None:
            await asyncio.gather(*(c.serving.wait() for c in self.children))
            if on_all_serving is not None:
                on_all_serving.set()

        ready = asyncio.create_task(all_serving())
        try:
            await self._stopping.wait()
        finally:
            ready.cancel()
            self._stopping.set()
            await asyncio.gather(*watchers, return_exceptions=True)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A watcher that failed leaves its service unsupervised: say so loudly."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error(
            "%s failed: %s; that service is no longer restarted", task.get_name(), error, exc_info=error
        )


def child_env(profile: str, home: str) -> dict[str, str]:
    env = dict(os.environ)
    if CALLERS_FORK_SUPPORT is None:  # set for the CLI's process only (services/cli/__init__.py)
        env.pop(FORK_SUPPORT_ENV, None)
    env["FORGE_PROFILE"] = profile
    env["FORGE_HOME"] = home
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
