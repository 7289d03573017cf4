"""`forge status`: the mesh on one screen (or one JSON object), once or refreshed with --watch.
The local mesh by default: every service of `forge up` on its default port (+ --port-offset),
the router with the API key the CLI uses, the others over mutual TLS with the operators'
certificate, as `forge up` checks them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from services.common.settings import DEFAULT_GRPC_PORTS, ForgeSettings

if TYPE_CHECKING:  # imported when the command runs: `forge --help` stays quick
    from services.cli.status_gather import MeshStatus, Target

# Services reached on a public port (plaintext or server TLS, with an API key); the others speak
# mutual TLS inside the mesh.
PUBLIC_SERVICES = ("router",)
# Exit codes: every service SERVING, or not.
EXIT_OK, EXIT_NOT_SERVING = 0, 1


def addresses(
    services: Sequence[str], host: str, port_offset: int, router: str | None, overrides: Sequence[str]
) -> dict[str, str]:
    """Where each service listens: its default port + the offset, then --router and --service."""
    found = {s: f"{host}:{DEFAULT_GRPC_PORTS[s] + port_offset}" for s in services if s in DEFAULT_GRPC_PORTS}
    if router:
        found["router"] = router
    for item in overrides:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise click.BadParameter(f"{item!r}: expected NAME=HOST:PORT", param_hint="--service")
        found[name] = address
    return found


def targets(settings: ForgeSettings, where: dict[str, str], tls_ca: Path | None) -> list[Target]:
    """How to reach each service: the router with the CLI's API key (FORGE_API_KEY, else the admin
    key), the others with the operators' client certificate."""
    import grpc

    from services.cli.client import api_key
    from services.cli.status_gather import Target
    from services.common.channels import PLAINTEXT, Dialer
    from services.common.credentials import SecurityError, dialer_for
    from services.common.security.settings import SecuritySettings

    home = settings.home_dir()
    key = api_key(home)
    public = (
        Dialer(grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())) if tls_ca else PLAINTEXT
    )
    internal: Dialer | None = None
    cannot_dial = ""
    try:
        internal = dialer_for("client", SecuritySettings(), home)
    except (SecurityError, ValueError, OSError) as exc:
        cannot_dial = f"cannot dial: {exc}"
    found: list[Target] = []
    for name, address in where.items():
        if name in PUBLIC_SERVICES:
            metadata = (("authorization", f"Bearer {key}"),) if key else ()
            found.append(Target(name, address, public, metadata))
        else:
            found.append(Target(name, address, internal or PLAINTEXT, cannot_dial=cannot_dial))
    return found


@click.command("status")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the local mesh listens.")
@click.option(
    "--port-offset", type=int, default=0, show_default=True, help="As given to `forge up --port-offset`."
)
@click.option(
    "--router",
    "router",
    envvar="FORGE_ROUTER",
    default=None,
    help="Router address (env FORGE_ROUTER; default: --host and its port + --port-offset).",
)
@click.option(
    "--service",
    "overrides",
    multiple=True,
    metavar="NAME=HOST:PORT",
    help="Where one service listens, when not on its default port (repeatable).",
)
@click.option(
    "--tls-ca",
    envvar="FORGE_ROUTER_CA",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="CA certificate of a router that serves TLS (env FORGE_ROUTER_CA).",
)
@click.option(
    "--timeout", "timeout_s", type=float, default=3.0, show_default=True, help="Seconds per question."
)
@click.option(
    "--watch",
    "watch_s",
    type=float,
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh every SECONDS (2 when not given) until Ctrl-C.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout (for scripts).")
@click.pass_obj
def status(
    settings: ForgeSettings,
    host: str,
    port_offset: int,
    router: str | None,
    overrides: tuple[str, ...],
    tls_ca: Path | None,
    timeout_s: float,
    watch_s: float | None,
    as_json: bool,
) -> None:
    """The mesh on one screen: each service's health, version and uptime; the router's sessions
    against the limit, its queue and rejections by reason; the GPU slices against their use;
    what did not answer. Exits 0 when every service is SERVING, 1 otherwise."""
    from services.cli.main import MESH_SERVICES
    from services.cli.status_gather import gather

    where = addresses(MESH_SERVICES, host, port_offset, router, overrides)
    asked = targets(settings, where, tls_ca)
    router_target = next((t for t in asked if t.name == "router"), None)

    async def once() -> MeshStatus:
        return await gather(asked, router_target, timeout_s)

    if watch_s is not None:
        _watch(once, max(0.5, watch_s), as_json)
        return
    mesh = asyncio.run(once())
    _show(mesh, as_json)
    sys.exit(EXIT_OK if mesh.ok else EXIT_NOT_SERVING)


def _show(mesh: MeshStatus, as_json: bool) -> None:
    from rich.console import Console

    from services.cli.status_view import render

    if as_json:
        click.echo(json.dumps(mesh.to_json(), sort_keys=False))
    else:
        Console(highlight=False).print(render(mesh))


def _watch(once: Callable[[], Awaitable[MeshStatus]], every_s: float, as_json: bool) -> None:
    """Refresh until Ctrl-C: the screen in place on a terminal; --json: one object per line."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from services.cli.status_view import render

    async def loop() -> None:
        live: Live | None = None
        if not as_json:
            live = Live(Text("asking the mesh ..."), console=Console(highlight=False), auto_refresh=False)
            live.start()
        try:
            while True:
                mesh = await once()
                if live is None:
                    click.echo(json.dumps(mesh.to_json()))
                else:
                    live.update(render(mesh), refresh=True)
                await asyncio.sleep(every_s)
        finally:
            if live is not None:
                live.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(loop())
