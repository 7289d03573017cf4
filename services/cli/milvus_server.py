"""A real Milvus server process: the standalone binary inside PyPI's `milvus` 2.3.5 wheel (no docker,
nothing downloaded at start). `forge up --routers N` runs one for its router replicas to share; the
integration and chaos tests start their own.

The wheel goes into a virtualenv of its own (its client extra pins an old pymilvus), built once and
reused: FORGE_HOME/milvus-server-venv for `forge up` (FORGE_MILVUS_SERVER_VENV names another), the
checkout's .cache/ for the tests. The `milvus-server` wrapper stops the server on SIGINT only
(SIGTERM kills the wrapper and orphans the server), so `stop()` sends SIGINT and then makes sure no
process it started is left.

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
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
import yaml
from pymilvus import MilvusClient, MilvusException

from services.cli.supervisor import die_with_parent

PACKAGE = "milvus==2.3.5"
# Where `forge up` keeps the server's virtualenv when FORGE_MILVUS_SERVER_VENV does not say.
VENV_ENV = "FORGE_MILVUS_SERVER_VENV"
VENV_NAME = "milvus-server-venv"
_READY_MARK = ".forge-ready"  # written last: a venv without it is a half-built one
# Components that register an address for the others to call: loopback, not the first NIC's address.
_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
_PROXY_PORT_OPTION = "--proxy-port"
_PORT_OPTIONS = (
    _PROXY_PORT_OPTION,
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


class MilvusUnavailable(RuntimeError):
    """The server exited before it answered (a port taken, a broken data directory...)."""


def venv_dir(home: Path, environ: Mapping[str, str] | None = None) -> Path:
    """The virtualenv `forge up` uses: FORGE_MILVUS_SERVER_VENV, else FORGE_HOME/milvus-server-venv."""
    named = (os.environ if environ is None else environ).get(VENV_ENV)
    return Path(named).expanduser() if named else home / VENV_NAME


def venv_ready(venv: Path) -> bool:
    return (venv / _READY_MARK).exists() and (venv / "bin" / "milvus-server").exists()


def ensure_server_venv(
    venv: Path, timeout_s: float = 600, on_build: Callable[[str], None] | None = None
) -> Path:
    """The `milvus-server` executable, installing the wheel into `venv` the first time (then
    `on_build` hears what is being done, as it takes minutes)."""
    executable = venv / "bin" / "milvus-server"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if venv_ready(venv):
            return executable
        if on_build is not None:
            on_build(f"pip install {PACKAGE} into {venv}")
        shutil.rmtree(venv, ignore_errors=True)
        steps = {
            f"python -m venv {venv}": [sys.executable, "-m", "venv", str(venv)],
            f"pip install {PACKAGE}": [
                *(str(venv / "bin" / "python"), "-m", "pip", "install"),
                *("--disable-pip-version-check", "-q", PACKAGE),
            ],
        }
        for what, step in steps.items():
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired as e:
                shutil.rmtree(venv, ignore_errors=True)
                raise ServerVenvUnavailable(f"`{what}` took over {timeout_s}s") from e
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
                raise ServerVenvUnavailable(f"`{what}` failed: {' | '.join(tail)}")
        (venv / _READY_MARK).write_text(PACKAGE + "\n")
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
    executable: Path,
    base_dir: Path,
    timeout_s: float = 120,
    extra_config: Sequence[str] = (),
    proxy_port: int = 0,
    reserved: Collection[int] = (),
    detach: bool = False,
) -> MilvusServer:
    """Start a server with its data under `base_dir` on loopback; return once it answers.
    `proxy_port`: the port clients use (0 = a free one); the internal ports are free ones, never one
    of `reserved` (ports others are about to take). `extra_config`: more `key=value` settings (e.g.
    "quotaAndLimits.flushRate.enabled=true"). `detach`: in a session of its own, so a terminal's
    Ctrl-C reaches only its starter (which stops it in its turn), and stopped (SIGINT) if the
    starter dies. Call it from the thread that lives as long as the server: Linux signals a
    detached server when the thread that started it ends."""
    if proxy_port and not _wait_bindable(proxy_port):
        # The wrapper would quietly take the next free port: the caller asked for this one.
        raise MilvusUnavailable(f"127.0.0.1:{proxy_port} is already taken (another Milvus server?)")
    base_dir.mkdir(parents=True, exist_ok=True)
    data_dir = base_dir / "data"
    taken = set(reserved) | {proxy_port}
    ports = {option: _free_port(taken) for option in _PORT_OPTIONS}
    if proxy_port:
        ports[_PROXY_PORT_OPTION] = proxy_port
    # Embedded etcd ignores --etcd-port and takes 2379/2380 on every host address unless told otherwise.
    etcd_client, etcd_peer = _free_port(taken), _free_port(taken)
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
            start_new_session=detach,
            preexec_fn=die_with_parent(signal.SIGINT) if detach else None,
        )
    server = MilvusServer(wrapper=wrapper, uri="", base_dir=base_dir, log=log)
    try:
        _wait_ready(server, data_dir, timeout_s)
        if proxy_port and server.uri != f"http://127.0.0.1:{proxy_port}":
            raise MilvusUnavailable(f"127.0.0.1:{proxy_port} was taken while the server started")
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
            raise MilvusUnavailable(
                f"milvus-server exited with {server.wrapper.returncode}:\n{server.log_tail()}"
            )
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
        time.sleep(0.2)  # polling a condition: the wrapper's banner, then the server's answer
    raise TimeoutError(f"Milvus not answering after {timeout_s}s ({last_error}):\n{server.log_tail()}")


def _bindable(port: int) -> bool:
    """Whether the wrapper could bind `port` as it checks it: a plain bind on loopback."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_bindable(port: int, timeout_s: float = 75.0) -> bool:
    """Whether `port` can be bound, waiting while nothing listens there but the kernel still holds
    it: right after a server on it stopped, its closed connections keep the port in TIME_WAIT for
    up to a minute, and a plain bind (the wrapper's) fails. A listener there: False at once."""
    deadline = time.monotonic() + timeout_s
    while not _bindable(port):
        with socket.socket() as probe:
            probe.settimeout(1.0)
            if probe.connect_ex(("127.0.0.1", port)) == 0 or time.monotonic() > deadline:
                return False
        time.sleep(0.5)  # polling the kernel's TIME_WAIT expiry: there is nothing to wait on
    return True


def _free_port(taken: set[int]) -> int:
    """A free loopback port not in `taken`, which it joins."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _merge(known: list[psutil.Process], found: list[psutil.Process]) -> list[psutil.Process]:
    pids = {p.pid for p in known}
    return known + [p for p in found if p.pid not in pids]
