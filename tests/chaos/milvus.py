"""The real Milvus server (PyPI `milvus` 2.3.5, tests/integration/milvus_server.py) as the chaos
suite needs it: killed or frozen, and restarted on the same data and ports, since nobody else
supervises it.

The first start goes through the `milvus-server` wrapper, which writes the configuration and
starts the server binary. A restart runs that binary again as the wrapper ran it (same command,
environment and working directory): the wrapper itself checks its ports with a plain bind, which
fails for a minute after a kill (the killed server's connections sit in TIME_WAIT), while the
server binds with SO_REUSEADDR as servers do.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil

from tests.integration.milvus_server import (
    MilvusServer,
    ensure_server_venv,
    start_server,
    why_not_answering,
)

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


class RestartableMilvus:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.first: MilvusServer | None = None
        self.uri = ""
        self._server: psutil.Process | None = None
        self._command: list[str] = []
        self._env: dict[str, str] = {}
        self._cwd = ""
        self._restarted: list[subprocess.Popen[bytes]] = []
        self.restarts = 0

    def start(self) -> None:
        """Build the server's venv if needed (ServerVenvUnavailable when it cannot be) and start."""
        self.first = start_server(ensure_server_venv(), self.base_dir, READY_TIMEOUT_S)
        self.uri = self.first.uri
        server = self._binary(psutil.Process(self.first.wrapper.pid).children(recursive=True))
        if server is None:
            raise RuntimeError(f"no Milvus server binary under the wrapper:\n{self.first.log_tail()}")
        self._server = server
        self._command = server.cmdline()
        self._env = server.environ()
        self._cwd = server.cwd()

    @staticmethod
    def _binary(processes: list[psutil.Process]) -> psutil.Process | None:
        for p in processes:
            with contextlib.suppress(psutil.Error):
                if p.cmdline()[1:3] == ["run", "standalone"]:
                    return p
        return None

    def server_process(self) -> psutil.Process | None:
        return self._server if self.running() else None

    def running(self) -> bool:
        server = self._server
        if server is None:
            return False
        with contextlib.suppress(psutil.Error):
            return server.is_running() and server.status() != psutil.STATUS_ZOMBIE
        return False

    def restart(self) -> None:
        """Start the server binary again on the same data, ports and configuration; return once
        it answers. Whatever is left of the previous one (a frozen or half-dead server, the
        first start's wrapper) is killed first."""
        self._kill_current()
        logs = Path(self._cwd) / "logs"
        with (logs / "milvus-stdout.log").open("ab") as out, (logs / "milvus-stderr.log").open("ab") as err:
            proc = subprocess.Popen(
                self._command, cwd=self._cwd, env=self._env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )
        self._restarted.append(proc)
        self._server = psutil.Process(proc.pid)
        self.restarts += 1
        self._wait_ready()

    def _kill_current(self) -> None:
        victims = [p for p in (self._server,) if p is not None]
        if self.first is not None and self.first.wrapper.poll() is None:
            victims.append(psutil.Process(self.first.wrapper.pid))
        for p in victims:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(victims, timeout=STOP_TIMEOUT_S)
        if self.first is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.first.wrapper.wait(STOP_TIMEOUT_S)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"the restarted Milvus server exited:\n{self._log_tail()}")
            if not _accepts(self.uri):
                # Not listening yet: a client made now would retry in a thread of its own.
                time.sleep(0.5)
                continue
            not_yet = why_not_answering(self.uri)  # up, but perhaps not answering yet
            if not_yet is None:
                return
            last = not_yet
            time.sleep(0.5)
        raise TimeoutError(f"the restarted Milvus server did not answer in {READY_TIMEOUT_S:.0f}s ({last})")

    def _log_tail(self, lines: int = 20) -> str:
        path = Path(self._cwd) / "logs" / "milvus-stderr.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop everything this object started: SIGINT (the server's clean stop), then kill."""
        if self.first is not None and not self._restarted:
            self.first.stop(STOP_TIMEOUT_S)
            return
        procs = [p for p in (self._server,) if p is not None]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGINT)
        _, alive = psutil.wait_procs(procs, timeout=STOP_TIMEOUT_S)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        for proc in self._restarted:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT_S)
        if self.first is not None:
            self.first.stop(STOP_TIMEOUT_S)


def _accepts(uri: str) -> bool:
    """Whether the server's proxy port takes a TCP connection."""
    parsed = urlparse(uri)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 19530), timeout=1):
            return True
    except OSError:
        return False
