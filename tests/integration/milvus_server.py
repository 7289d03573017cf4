"""A real Milvus server for integration tests: the standalone binary inside PyPI's `milvus` 2.3.5 wheel
(no docker, nothing downloaded at start).

The wheel goes into its own virtualenv under the checkout's .cache/ (its client extra pins an old
pymilvus), built once and reused. Each server gets a fresh data directory and free loopback ports.
The `milvus-server` wrapper stops the server on SIGINT only (SIGTERM kills the wrapper and orphans the
server), so `stop()` sends SIGINT and then makes sure no process it started is left.

Milvus 2.3.5 has no bind-address setting: `<component>.ip=127.0.0.1` makes the components register and
call each other on loopback, but their gRPC ports still listen on all interfaces, as does the metrics
port (the wrapper takes the first free one from 9091). Embedded etcd is bound to loopback here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import yaml
from pymilvus import MilvusClient, MilvusException

from tests.helpers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV = REPO_ROOT / ".cache" / "milvus-server-venv"
PACKAGE = "milvus==2.3.5"
_READY_MARK = ".forge-ready"  # written last: a venv without it is a half-built one
# Components that register an address for the others to call: loopback, not the first NIC's address.
_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
_PORT_OPTIONS = (
    "--proxy-port",
    "--proxy-internal-port",
    "--root-coord-port",
    "--query-coord-port",
    "--query-node-port",
    "--index-coord-port",
    "--index-node-port",
    "--data-coord-port",
    "--data-node-port",
)
_BANNER = "Ctrl+C to exit"  # the wrapper prints it once the server's /healthz says OK


class ServerVenvUnavailable(RuntimeError):
    """The server's virtualenv could not be built (offline, no wheel for this platform...)."""


def ensure_server_venv(timeout_s: float = 600) -> Path:
    """The `milvus-server` executable, installing the wheel into VENV the first time."""
    executable = VENV / "bin" / "milvus-server"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "milvus-server-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test process may be building it right now
        if (VENV / _READY_MARK).exists() and executable.exists():
            return executable
        shutil.rmtree(VENV, ignore_errors=True)
        steps = {
            f"python -m venv {VENV}": [sys.executable, "-m", "venv", str(VENV)],
            f"pip install {PACKAGE}": [
                *(str(VENV / "bin" / "python"), "-m", "pip", "install"),
                *("--disable-pip-version-check", "-q", PACKAGE),
            ],
        }
        for what, step in steps.items():
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired as e:
                shutil.rmtree(VENV, ignore_errors=True)
                raise ServerVenvUnavailable(f"`{what}` took over {timeout_s}s") from e
            if done.returncode != 0:
                shutil.rmtree(VENV, ignore_errors=True)
                tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
                raise ServerVenvUnavailable(f"`{what}` failed: {' | '.join(tail)}")
        (VENV / _READY_MARK).write_text(PACKAGE + "\n")
    return executable


@dataclass
class MilvusServer:
    """A running server; `uri` is its proxy (the port clients use)."""

    wrapper: subprocess.Popen[bytes]
    uri: str
    base_dir: Path
    log: Path
    children: list[psutil.Process] = field(default_factory=list)

    def log_tail(self, lines: int = 20) -> str:
        text = []
        for path in (self.log, self.base_dir / "data" / "logs" / "milvus-stderr.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(text)

    def stop(self, timeout_s: float = 30) -> None:
        """SIGINT to the wrapper (it stops the server and exits), then wait for every process it
        started; kill any left behind. Only processes started by this object are touched."""
        with contextlib.suppress(psutil.NoSuchProcess):
            self.children = _merge(self.children, psutil.Process(self.wrapper.pid).children(recursive=True))
        if self.wrapper.poll() is None:
            self.wrapper.send_signal(signal.SIGINT)
            try:
                self.wrapper.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.wrapper.kill()
                self.wrapper.wait(timeout_s)
        _, alive = psutil.wait_procs(self.children, timeout=timeout_s)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=timeout_s)


def start_server(
    executable: Path, base_dir: Path, timeout_s: float = 120, extra_config: Sequence[str] = ()
) -> MilvusServer:
    """Start a server with its data under `base_dir` on free loopback ports; return once it answers.
    `extra_config`: more `key=value` settings (e.g. "quotaAndLimits.flushRate.enabled=true")."""
    base_dir.mkdir(parents=True, exist_ok=True)
    data_dir = base_dir / "data"
    ports = {option: free_port() for option in _PORT_OPTIONS}
    # Embedded etcd ignores --etcd-port and takes 2379/2380 on every host address unless told otherwise.
    etcd_client, etcd_peer = free_port(), free_port()
    etcd_config = base_dir / "etcd.yaml"
    etcd_config.write_text(
        f"listen-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"advertise-client-urls: http://127.0.0.1:{etcd_client}\n"
        f"listen-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{etcd_peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{etcd_peer}\n"
    )
    command = [str(executable), "--data", str(data_dir), "--etcd-port", str(etcd_client)]
    for option, port in ports.items():
        command += [option, str(port)]
    for component in _COMPONENTS:
        command += ["--extra-config", f"{component}.ip=127.0.0.1"]
    # Strong-consistency reads wait for the next time tick: 50 ms ticks instead of 200 make the
    # tests several times faster and change nothing else.
    command += ["--extra-config", "proxy.timeTickInterval=50"]
    for setting in extra_config:
        command += ["--extra-config", setting]
    log = base_dir / "milvus-server.log"
    with open(log, "wb") as out:
        wrapper = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "ETCD_CONFIG_PATH": str(etcd_config), "PYTHONUNBUFFERED": "1"},
        )
    server = MilvusServer(wrapper=wrapper, uri="", base_dir=base_dir, log=log)
    try:
        _wait_ready(server, data_dir, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def why_not_answering(uri: str) -> str | None:
    """None once the server at `uri` lists its collections; else what it said. Right after a
    restart pymilvus may raise a bare gRPC error instead of its own."""
    try:
        client = MilvusClient(uri, timeout=5)
        try:
            client.list_collections(timeout=5)
            return None
        finally:
            client.close()
    except (MilvusException, grpc.RpcError) as e:
        return str(e)


def _wait_ready(server: MilvusServer, data_dir: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = "no banner yet"
    while time.monotonic() < deadline:
        if server.wrapper.poll() is not None:
            raise RuntimeError(f"milvus-server exited with {server.wrapper.returncode}:\n{server.log_tail()}")
        if _BANNER in server.log.read_text(errors="replace"):
            if not server.uri:
                # The wrapper moves to the next port when one is taken: read what it really wrote.
                config = yaml.safe_load((data_dir / "configs" / "milvus.yaml").read_text())
                server.uri = f"http://127.0.0.1:{int(config['proxy']['port'])}"
                server.children = psutil.Process(server.wrapper.pid).children(recursive=True)
            not_yet = why_not_answering(server.uri)
            if not_yet is None:
                return
            last_error = not_yet
        time.sleep(0.2)
    raise TimeoutError(f"Milvus not answering after {timeout_s}s ({last_error}):\n{server.log_tail()}")


def _merge(known: list[psutil.Process], found: list[psutil.Process]) -> list[psutil.Process]:
    pids = {p.pid for p in known}
    return known + [p for p in found if p.pid not in pids]
