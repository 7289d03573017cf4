"""One service as a process. `python -m services.<name>` (what `forge up` starts) and
`forge serve <name>` both run a service through here, so a service never imports the CLI."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from services.common import cpusets
from services.common.channels import Dialer
from services.common.config import ConfigError, SkuProfile, load_profile
from services.common.credentials import SecurityError, dialer_for, is_loopback, server_security
from services.common.security.settings import SecuritySettings
from services.common.server import ServerOptions, ServiceApp, configure_logging, run_service
from services.common.settings import DEFAULT_GRPC_PORTS, DEFAULT_METRICS_PORTS, ForgeSettings

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0


@dataclass(frozen=True)
class ServiceEntry:
    """How a service is built from the SKU profile, FORGE_HOME and the way it dials the other
    services. `configuration` names what a ValueError from `build` is about (its
    FORGE_<NAME>_* settings, its policy)."""

    name: str
    build: Callable[[SkuProfile, Path, Dialer], ServiceApp]
    configuration: str


class ServeError(Exception):
    """The service cannot start (an unknown profile, invalid settings); the message says why."""


def server_options(host: str, port: int, metrics_port: int, grace_s: float) -> ServerOptions:
    """The server kit's options from the command line; a negative metrics port turns /metrics off."""
    return ServerOptions(
        host=host, port=port, metrics_port=None if metrics_port < 0 else metrics_port, drain_grace_s=grace_s
    )


def serve(entry: ServiceEntry, settings: ForgeSettings, options: ServerOptions) -> int:
    """Build the service from the profile and its settings, then serve it until SIGTERM/SIGINT.
    Returns the process exit code."""
    try:
        profile = load_profile(settings.profile)
    except ConfigError as exc:
        raise ServeError(str(exc)) from exc
    home = settings.home_dir()
    try:
        security_settings = SecuritySettings()
        security = server_security(entry.name, security_settings, home)
        dialer = dialer_for(entry.name, security_settings, home)
    except (SecurityError, ValueError, OSError) as exc:
        raise ServeError(f"security settings: {exc}") from exc
    if security.keys is None and security.transport == "plaintext" and not is_loopback(options.host):
        log.warning("%s serves plaintext without API keys on %s", entry.name, options.host)
    try:
        app = entry.build(profile, home, dialer)
    except ValueError as exc:  # pydantic's ValidationError and the policy/config errors
        raise ServeError(f"invalid {entry.configuration}:\n{exc}") from exc
    apply_cpu_set(entry.name, profile)
    options = replace(options, security=security, maximum_concurrent_rpcs=settings.max_concurrent_rpcs)
    return asyncio.run(run_service(app, profile, options))


def apply_cpu_set(service: str, profile: SkuProfile) -> cpusets.Placement:
    """Pin this process to the service's CPU set from the profile and size its thread pools, then
    log where it runs. Called once the service is built (settings valid) and before it loads its
    model: torch, vLLM and the tokenizers are imported, and vLLM's engine core and worker started,
    after this, so they inherit the affinity and read the thread-pool variables. A machine with
    fewer CPUs than the profile assumes degrades to the CPUs it has, with a warning."""
    placement = cpusets.place(
        service, profile.cpu_sets.of(service), cpusets.Machine.this(), profile.cpu_sets.host_cpus
    )
    if placement.warning:
        log.warning("%s", placement.warning)
    if problem := cpusets.apply(placement):
        log.warning("%s", problem)
    log.info("%s", placement.summary())
    return placement


def serve_main(entry: ServiceEntry, argv: Sequence[str] | None = None) -> NoReturn:
    """`python -m services.<name> [--host] [--port] [--metrics-port] [--grace]`, with the same
    defaults as `forge serve <name>`; FORGE_PROFILE, FORGE_HOME and FORGE_LOG_LEVEL come from the
    environment."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{entry.name}", description=f"Run the Forge {entry.name} service."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_GRPC_PORTS[entry.name], help="gRPC port (0 = any free port)."
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORTS[entry.name],
        help="Prometheus /metrics port (0 = any free port, -1 = off).",
    )
    parser.add_argument(
        "--grace",
        dest="grace_s",
        type=float,
        default=DEFAULT_GRACE_S,
        help="Seconds in-flight calls get to finish on SIGTERM.",
    )
    args = parser.parse_args(argv)
    settings = ForgeSettings()
    configure_logging(settings.log_level.upper())
    try:
        code = serve(entry, settings, server_options(args.host, args.port, args.metrics_port, args.grace_s))
    except ServeError as exc:
        print(f"Error: {exc}", file=sys.stderr)  # as `forge serve` reports it
        sys.exit(1)
    sys.exit(code)
