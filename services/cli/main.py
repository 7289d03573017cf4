"""The `forge` command: serve one service, bring the mesh up, inspect SKU plans."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from services.cli.status import status as status_command
from services.common import entrypoint
from services.common.config import ConfigError, SkuProfile, load_profile, load_profiles
from services.common.server import configure_logging
from services.common.settings import (
    DEFAULT_GRPC_PORTS,
    DEFAULT_HTTP_PORTS,
    DEFAULT_METRICS_PORTS,
    ForgeSettings,
)

if TYPE_CHECKING:
    from services.cli.replicas import RouterReplica, SharedBacking
    from services.cli.supervisor import ChildSpec, RestartPolicy
    from services.cli.up_console import UpConsole
    from services.common.channels import Dialer

# Services `forge up` starts (all at once; each is health-gated on its own).
MESH_SERVICES = ("llm", "embed", "guardrails", "router", "gateway")
# The router reports SERVING only once these serve (its readiness); its start clock waits for them.
ROUTER_WAITS_FOR = ("llm", "embed", "guardrails")
DEFAULT_ROUTER = f"127.0.0.1:{DEFAULT_GRPC_PORTS['router']}"


def _profile_or_exit(name: str) -> SkuProfile:
    try:
        return load_profile(name)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--profile",
    envvar="FORGE_PROFILE",
    default="cpu",
    show_default=True,
    help="SKU profile from deploy/sku_profiles.yaml (env FORGE_PROFILE).",
)
@click.option(
    "--home",
    envvar="FORGE_HOME",
    type=click.Path(path_type=Path),
    default=None,
    help="Model caches and Milvus Lite data (env FORGE_HOME, default ~/.forge).",
)
@click.option("--log-level", envvar="FORGE_LOG_LEVEL", default="INFO", show_default=True)
@click.pass_context
def cli(ctx: click.Context, profile: str, home: Path | None, log_level: str) -> None:
    """Forge: an async gRPC inference mesh for one-GPU edge appliances."""
    configure_logging(log_level.upper())
    settings = ForgeSettings(profile=profile, log_level=log_level)
    if home is not None:
        settings = settings.model_copy(update={"home": home})
    ctx.obj = settings


F = TypeVar("F", bound=Callable[..., Any])


def _serve_options(service: str) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        f = click.option(
            "--grace",
            "grace_s",
            type=float,
            default=entrypoint.DEFAULT_GRACE_S,
            show_default=True,
            help="Seconds in-flight calls get to finish on SIGTERM.",
        )(f)
        f = click.option(
            "--metrics-port",
            type=int,
            default=DEFAULT_METRICS_PORTS[service],
            show_default=True,
            help="Prometheus /metrics port (0 = any free port, -1 = off).",
        )(f)
        f = click.option(
            "--port",
            type=int,
            default=DEFAULT_GRPC_PORTS[service],
            show_default=True,
            help="gRPC port (0 = any free port).",
        )(f)
        f = click.option("--host", default="127.0.0.1", show_default=True)(f)
        return f

    return decorate


def _serve(
    settings: ForgeSettings,
    entry: entrypoint.ServiceEntry,
    host: str,
    port: int,
    metrics_port: int,
    grace_s: float,
) -> None:
    """Serve one service in this process until SIGTERM, as `python -m services.<name>` does."""
    options = entrypoint.server_options(host, port, metrics_port, grace_s)
    try:
        code = entrypoint.serve(entry, settings, options)
    except entrypoint.ServeError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


@cli.group()
def serve() -> None:
    """Run one service in this process."""


@serve.command("embed")
@_serve_options("embed")
@click.pass_obj
def serve_embed(settings: ForgeSettings, host: str, port: int, metrics_port: int, grace_s: float) -> None:
    """Embeddings (sentence-transformers, micro-batched). Env FORGE_EMBED_* tunes it."""
    from services.embed.__main__ import SERVICE

    _serve(settings, SERVICE, host, port, metrics_port, grace_s)


@serve.command("guardrails")
@_serve_options("guardrails")
@click.pass_obj
def serve_guardrails(
    settings: ForgeSettings, host: str, port: int, metrics_port: int, grace_s: float
) -> None:
    """Guardrails (input, retrieval and output rails). Env FORGE_GUARDRAILS_* tunes it."""
    from services.guardrails.__main__ import SERVICE

    _serve(settings, SERVICE, host, port, metrics_port, grace_s)


@cli.group()
def guardrails() -> None:
    """Guardrails tools."""


@guardrails.command("train")
@click.pass_obj
def guardrails_train(settings: ForgeSettings) -> None:
    """(Re)build the injection and harm heads into FORGE_HOME/guardrails from packaged data."""
    from services.guardrails.encoder import TextEncoder
    from services.guardrails.training.heads import HeadStore
    from services.guardrails.training.sources import SourceMissing

    store = HeadStore.under(settings.home_dir())
    try:
        infos = store.train(TextEncoder.load("cpu", 0.0))
    except SourceMissing as exc:
        raise click.ClickException(str(exc)) from exc
    for info in infos:
        click.echo(
            f"{info.name}: {info.features}; {info.positives} positive / {info.negatives} negative rows "
            f"from {', '.join(info.sources)}; {info.train_seconds}s"
        )
    click.echo(f"artefacts in {store.root}")


@serve.command("llm")
@_serve_options("llm")
@click.pass_obj
def serve_llm(settings: ForgeSettings, host: str, port: int, metrics_port: int, grace_s: float) -> None:
    """LLM inference (vLLM or llama.cpp engine, streamed tokens). Env FORGE_LLM_* tunes it."""
    from services.llm.__main__ import SERVICE

    _serve(settings, SERVICE, host, port, metrics_port, grace_s)


@serve.command("gateway")
@_serve_options("gateway")
@click.pass_obj
def serve_gateway(settings: ForgeSettings, host: str, port: int, metrics_port: int, grace_s: float) -> None:
    """OpenAI-compatible HTTP API (FORGE_GATEWAY_HTTP_PORT, default 8080) in front of the router;
    --port is its gRPC health/ops port. Env FORGE_GATEWAY_* tunes it (router, embed, llm addresses)."""
    from services.gateway.__main__ import SERVICE

    _serve(settings, SERVICE, host, port, metrics_port, grace_s)


@serve.command("router")
@_serve_options("router")
@click.option(
    "--tls-cert", envvar="FORGE_PUBLIC_TLS_CERT", default="", help="Serve TLS with this certificate."
)
@click.option("--tls-key", envvar="FORGE_PUBLIC_TLS_KEY", default="", help="The certificate's private key.")
@click.pass_obj
def serve_router(
    settings: ForgeSettings,
    host: str,
    port: int,
    metrics_port: int,
    grace_s: float,
    tls_cert: str,
    tls_key: str,
) -> None:
    """Router: admission control and RAG over Milvus (Milvus Lite under FORGE_HOME by default).
    Env FORGE_ROUTER_* tunes it (downstream addresses, Milvus URI, retrieval and rail policy).
    Callers need an API key (`forge keys create`); FORGE_AUTH=off turns that off."""
    from services.router.__main__ import SERVICE

    os.environ["FORGE_PUBLIC_TLS_CERT"], os.environ["FORGE_PUBLIC_TLS_KEY"] = tls_cert, tls_key
    _serve(settings, SERVICE, host, port, metrics_port, grace_s)


def _client_options(f: F) -> F:
    f = click.option(
        "--router",
        "address",
        envvar="FORGE_ROUTER",
        default=DEFAULT_ROUTER,
        show_default=True,
        help="Router address (env FORGE_ROUTER).",
    )(f)
    f = click.option(
        "--tls-ca",
        envvar="FORGE_ROUTER_CA",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        default=None,
        help="CA certificate of a router that serves TLS (env FORGE_ROUTER_CA); plaintext without it.",
    )(f)
    f = click.option(
        "--collection", default="", help="Collection (default: the router's default collection)."
    )(f)
    f = click.option(
        "--tenant",
        envvar="FORGE_TENANT",
        default="",
        help="Tenant to act for (env FORGE_TENANT; default: the API key's own). Another tenant "
        "needs an admin key.",
    )(f)
    return f


def _router(settings: ForgeSettings, address: str, tenant: str, tls_ca: Path | None) -> Any:
    """The router as the CLI reaches it: the key from FORGE_API_KEY, else FORGE_HOME/keys/admin.key."""
    from services.cli import client

    return client.Router(address, client.api_key(settings.home_dir()), tenant, tls_ca)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@_client_options
@click.pass_obj
def ingest(
    settings: ForgeSettings,
    paths: tuple[Path, ...],
    tenant: str,
    collection: str,
    tls_ca: Path | None,
    address: str,
) -> None:
    """Store text and Markdown files as documents (one per file, id = file name; folders are
    searched for .txt/.md files). Ingesting a file again replaces its document."""
    from services.cli import client

    try:
        files = client.documents_in(paths)
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    if not files:
        raise click.ClickException("no text or Markdown files found")
    with click.progressbar(length=len(files), label="Ingesting", file=sys.stderr) as bar:

        def stored(doc: client.Ingested) -> None:
            bar.update(1)
            click.echo(f"  {doc.document_id}: {doc.chunk_count} chunks", err=True)

        try:
            documents, chunks = client.ingest(
                _router(settings, address, tenant, tls_ca), files, collection, stored
            )
        except client.ClientError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"ingested {documents} documents ({chunks} chunks)" + (f" for tenant {tenant}" if tenant else "")
    )


@cli.command()
@click.argument("question")
@_client_options
@click.option("--top-k", type=int, default=0, help="Chunks to retrieve (0 = the router's default).")
@click.option("--max-tokens", type=int, default=None, help="Longest answer in tokens.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object: the answer and its whole summary."
)
@click.pass_obj
def ask(
    settings: ForgeSettings,
    question: str,
    tenant: str,
    collection: str,
    tls_ca: Path | None,
    address: str,
    top_k: int,
    max_tokens: int | None,
    as_json: bool,
) -> None:
    """Ask a question; the answer streams, then its sources ([n] in the answer) and the model."""
    from services.cli import answer_view, client

    pieces: list[str] = []

    def on_text(text: str) -> None:
        pieces.append(text)
        if not as_json:
            click.echo(text, nl=False)

    try:
        summary = client.ask(
            _router(settings, address, tenant, tls_ca), question, collection, top_k, max_tokens, on_text
        )
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(answer_view.summary_json(question, "".join(pieces), summary))
        return
    click.echo()
    for line in answer_view.summary_lines(summary):
        click.echo(line)


def _key_store(settings: ForgeSettings) -> Any:
    from services.common.security.keys import KeyStore
    from services.common.security.settings import SecuritySettings

    return KeyStore(SecuritySettings().keys_path(settings.home_dir()))


@cli.group()
def keys() -> None:
    """API keys: each decides its caller's tenant; admin keys may act for any tenant."""


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for.")
@click.option("--role", type=click.Choice(["tenant", "admin"]), default="tenant", show_default=True)
@click.pass_obj
def keys_create(settings: ForgeSettings, tenant: str, role: str) -> None:
    """Make a key and print it alone on stdout: it is shown once, only its hash is stored."""
    from services.common.security.keys import KeyStoreError

    store = _key_store(settings)
    try:
        key = store.create(tenant, role)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(key)
    click.echo(f"key {key.split('_')[1]} for tenant {tenant} ({role}) stored in {store.path}", err=True)


@keys.command("list")
@click.pass_obj
def keys_list(settings: ForgeSettings) -> None:
    """Every key: id, tenant, role, when made and when revoked."""
    from services.common.security.keys import KeyStoreError

    store = _key_store(settings)
    try:
        records = store.records()
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'ID':<9} {'TENANT':<24} {'ROLE':<7} {'CREATED':<26} REVOKED")
    for r in records:
        click.echo(f"{r.id:<9} {r.tenant:<24} {r.role:<7} {r.created:<26} {r.revoked or '-'}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_obj
def keys_revoke(settings: ForgeSettings, key_id: str) -> None:
    """Revoke a key; running routers refuse it within 5 s."""
    from services.common.security.keys import KeyStoreError

    try:
        record = _key_store(settings).revoke(key_id)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"key {record.id} (tenant {record.tenant}) revoked at {record.revoked}")


@cli.group()
def tls() -> None:
    """The mesh's private CA and its services' certificates (mutual TLS inside)."""


@tls.command("init")
@click.option("--san", "sans", multiple=True, help="Another name or IP the service certificates carry.")
@click.option("--renew", is_flag=True, help="Issue every certificate again from the existing CA.")
@click.pass_obj
def tls_init(settings: ForgeSettings, sans: tuple[str, ...], renew: bool) -> None:
    """Make the CA and the certificates that are missing under FORGE_TLS_DIR (FORGE_HOME/tls).
    Running services pick up renewed certificates for new connections without a restart."""
    from services.common.security.settings import SecuritySettings
    from services.common.security.tls import ensure_tls_dir

    tls_dir, issued = ensure_tls_dir(SecuritySettings().tls_path(settings.home_dir()), sans, renew)
    click.echo(f"{tls_dir.path}: " + (f"issued {', '.join(issued)}" if issued else "nothing to do"))


@cli.group()
def model() -> None:
    """Model files: prepare them offline, once."""


@model.command("prepare")
@click.option("--force", is_flag=True, help="Convert again even if the model is already prepared.")
@click.pass_obj
def model_prepare(settings: ForgeSettings, force: bool) -> None:
    """Make the model the LLM service will load ready under FORGE_HOME/models (idempotent): the
    packaged GGUF joined from its chunk packages (llama_cpp engine, the cpu profile's default), or
    SmolLM2-135M-Instruct converted to a Hugging Face folder (vllm engine)."""
    from services.llm import packaged_models
    from services.llm.app import LlmApp
    from services.llm.prepare import default_model_dir, prepare_model

    app = LlmApp(_profile_or_exit(settings.profile), settings.home_dir())

    def progress(line: str) -> None:
        click.echo(f"forge model prepare: {line}")

    try:
        if app.engine_name == "llama_cpp":
            if app.settings.gguf_path is not None:  # the operator's own file: nothing to prepare
                click.echo(str(app.settings.gguf_path))
                return
            model, models_dir = app.packaged_model(), app.home / "models"
            if force:  # the marker is what says "joined and checked"
                packaged_models.marker(models_dir / model.file).unlink(missing_ok=True)
            click.echo(str(packaged_models.gguf_path(model, models_dir, progress=progress)))
            return
        target = default_model_dir(settings.home_dir())
        prepare_model(target, force=force, progress=progress)
    except (FileNotFoundError, packaged_models.ModelUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(target))


@cli.command()
@click.option("--sku", default=None, help="Profile to show (default: the --profile in use).")
@click.option("--all", "show_all", is_flag=True, help="Validate and show every profile.")
@click.pass_obj
def plan(settings: ForgeSettings, sku: str | None, show_all: bool) -> None:
    """Print and validate a SKU's GPU slice plan in bytes."""
    from services.cli.plan import render_plan

    if show_all:
        try:
            profiles = load_profiles()
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo("\n\n".join(render_plan(p) for p in profiles.values()))
        return
    click.echo(render_plan(_profile_or_exit(sku or settings.profile)))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port-offset",
    type=int,
    default=0,
    show_default=True,
    help="Added to every default port, to run a second mesh beside the first.",
)
@click.option(
    "--start-timeout",
    type=float,
    default=300.0,
    show_default=True,
    envvar="FORGE_UP_START_TIMEOUT_S",
    help="Seconds a service may take to report SERVING; one that does not is killed and restarted "
    "(env FORGE_UP_START_TIMEOUT_S).",
)
@click.option(
    "--liveness-timeout",
    type=float,
    default=60.0,
    show_default=True,
    envvar="FORGE_UP_LIVENESS_TIMEOUT_S",
    help="Seconds a SERVING service may go without answering its health check (frozen) before it "
    "is killed and restarted; 0 = never (env FORGE_UP_LIVENESS_TIMEOUT_S).",
)
@click.option(
    "--max-backoff",
    type=float,
    default=30.0,
    show_default=True,
    envvar="FORGE_UP_MAX_BACKOFF_S",
    help="The longest wait between restarts of a crash-looping service; waits start at 1 s and "
    "double (env FORGE_UP_MAX_BACKOFF_S).",
)
@click.option(
    "--tls",
    "public_tls",
    is_flag=True,
    help="Serve TLS on the router's port too, with the mesh CA's router certificate "
    "(clients: --tls-ca FORGE_HOME/tls/ca.crt).",
)
@click.option(
    "--verbose",
    is_flag=True,
    envvar="FORGE_UP_VERBOSE",
    help="Show the services' logs here as they run, too (always in FORGE_HOME/logs/<service>.log; "
    "env FORGE_UP_VERBOSE).",
)
@click.option(
    "--routers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Router replicas, the cluster's shape on one box: 2 or more share one session limit "
    "through a Redis and their documents through a Milvus server, both started here too (the "
    "server's virtualenv is built under FORGE_HOME on first use). Replica i serves on port "
    "50051 + 100·i, metrics 9101 + 100·i.",
)
@click.pass_obj
def up(
    settings: ForgeSettings,
    host: str,
    port_offset: int,
    start_timeout: float,
    liveness_timeout: float,
    max_backoff: float,
    public_tls: bool,
    verbose: bool,
    routers: int,
) -> None:
    """Start the mesh: every service as its own process on loopback, health-gated, restarted when
    it exits, does not report SERVING within --start-timeout, or stops answering its health for
    --liveness-timeout (with backoff on crash loops, said on stderr); Ctrl-C stops them all
    cleanly. At first start it makes the mesh's private CA and certificates (FORGE_HOME/tls) and
    an admin API key (FORGE_HOME/keys/admin.key). Prints a line per service as it serves; each
    service's log goes to FORGE_HOME/logs/<service>.log (--verbose: here too). With --routers N
    (N >= 2) it starts a Redis and a Milvus server first and stops them last."""
    from services.cli.replicas import router_replicas
    from services.cli.supervisor import RestartPolicy, Supervisor, child_env
    from services.cli.up_console import UpConsole, quiet_cli_logging
    from services.common.cpusets import Machine, format_cpu_list, place
    from services.common.isolation import mps_startup_warning
    from services.common.security.settings import admin_key_path

    profile = _profile_or_exit(settings.profile)
    if warning := mps_startup_warning(profile):
        click.echo(f"warning: {warning}", err=True)
    # Each service pins itself to its CPU set at start (it reads the same profile); these are the
    # CPUs it will get on this machine, and why not the profile's where the machine is smaller.
    machine = Machine.this()
    placements = {
        s: place(s, profile.cpu_sets.of(s), machine, profile.cpu_sets.host_cpus) for s in MESH_SERVICES
    }
    for placement in placements.values():
        if placement.warning:
            click.echo(f"warning: {placement.warning}", err=True)
    home = settings.home_dir()
    dialers, tls_dir = _first_start_security(home, public_tls)
    replicas = router_replicas(routers, port_offset)
    env = child_env(settings.profile, str(home))
    if public_tls:
        env["FORGE_PUBLIC_TLS_CERT"] = str(tls_dir.cert("router"))
        env["FORGE_PUBLIC_TLS_KEY"] = str(tls_dir.key("router"))
    # The router reaches the other services on the ports this mesh uses.
    for service in ("llm", "embed", "guardrails"):
        env[f"FORGE_ROUTER_{service.upper()}_ADDRESS"] = f"{host}:{DEFAULT_GRPC_PORTS[service] + port_offset}"
    # The OpenAI-compatible front: its HTTP port follows the offset too (any free one where the
    # offset takes it out of range); it calls the router (replica 0), and embed and llm for what
    # the router lacks.
    http_port = DEFAULT_HTTP_PORTS["gateway"] + port_offset
    env["FORGE_GATEWAY_HTTP_HOST"] = host
    env["FORGE_GATEWAY_HTTP_PORT"] = str(http_port if 0 < http_port < 65536 else 0)
    for service in ("router", "embed", "llm"):
        env[f"FORGE_GATEWAY_{service.upper()}_ADDRESS"] = (
            f"{host}:{DEFAULT_GRPC_PORTS[service] + port_offset}"
        )
    if public_tls:
        env["FORGE_GATEWAY_ROUTER_CA"] = str(tls_dir.ca_cert)
    policy = RestartPolicy(
        start_timeout_s=start_timeout,
        liveness_timeout_s=liveness_timeout,
        backoff_max_s=max(max_backoff, RestartPolicy.backoff_initial_s),
    )
    logs_dir = home / "logs"
    if not verbose:
        quiet_cli_logging(logs_dir)
    console = UpConsole()

    # What the replicas share starts before them and stops after them: closing `shared` stops the
    # Milvus server, then Redis (also on Ctrl-C while they start, and when one cannot start).
    with contextlib.suppress(KeyboardInterrupt), contextlib.ExitStack() as shared_stack:
        specs = mesh_specs(profile, host, port_offset, dialers, replicas)
        _exit_if_ports_taken(specs, host, int(env["FORGE_GATEWAY_HTTP_PORT"]))
        shared = None
        if routers > 1:
            mesh_ports = {p for s in specs for p in (s.port, s.metrics_port)} | {http_port}
            shared = _start_shared(shared_stack, console, routers, home, host, port_offset, mesh_ports)
            specs = mesh_specs(profile, host, port_offset, dialers, replicas, shared)
        supervisor = Supervisor(specs, env, policy, reporter=console, logs_dir=logs_dir, echo_logs=verbose)
        click.echo(
            f"Starting {len(specs)} services (profile {settings.profile}); their logs: "
            f"{logs_dir}/<service>.log" + ("" if verbose else " (--verbose shows them here)")
        )

        async def main() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, supervisor.request_stop)
            ready = asyncio.Event()
            # forge up's own Redis is restarted when it exits, as the services are.
            redis_keeper = None
            if shared is not None and shared.redis is not None:
                redis_keeper = asyncio.create_task(shared.redis.keep(policy.backoff_max_s))
            runner = asyncio.create_task(supervisor.run(ready))
            ready_wait = asyncio.create_task(ready.wait())
            await asyncio.wait({runner, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
            if ready.is_set():
                console.close()
                click.echo(f"Forge is up (profile {settings.profile}, home {home}):")
                for spec in specs:
                    cpus = placements[spec.runs]
                    click.echo(
                        f"  {spec.service:<11} grpc {host}:{spec.port}   "
                        f"metrics http://{host}:{spec.metrics_port}/metrics"
                        + (f"   CPUs {format_cpu_list(cpus.cpus)}" if cpus.requested is not None else "")
                    )
                if (gateway_http := env.get("FORGE_GATEWAY_HTTP_PORT", "0")) != "0":
                    click.echo(f"  {'openai api':<11} http://{host}:{gateway_http}/v1 (the gateway)")
                if shared is None:
                    milvus = os.environ.get("FORGE_ROUTER_MILVUS_URI") or str(home / "milvus" / "forge.db")
                    click.echo(f"  {'milvus':<11} {milvus} (owned by the router)")
                else:
                    click.echo(
                        f"  {'redis':<11} {shared.admission_url} (the {routers} routers' session limit)"
                    )
                    click.echo(f"  {'milvus':<11} {shared.milvus_uri} (the {routers} routers' documents)")
                if (key_file := admin_key_path(home)).is_file():
                    click.echo(f"  {'admin key':<11} {key_file} (the CLI's default key)")
                click.echo(f"  {'logs':<11} {logs_dir}/<service>.log (forge up's own: {logs_dir}/up.log)")
                # With replicas: ask another router than the one that ingested, as they share it all.
                first, other = replicas[0], replicas[min(1, routers - 1)]
                click.echo(
                    f"Try: forge ingest README.md --router {host}:{first.port}; "
                    f"forge ask 'What is Forge?' --router {host}:{other.port}"
                )
                click.echo(_restart_summary(policy))
                click.echo("Ctrl-C stops the mesh.")
            await runner
            ready_wait.cancel()
            if redis_keeper is not None:
                redis_keeper.cancel()

        asyncio.run(main())
    console.close()
    click.echo("Forge stopped.")


def _exit_if_ports_taken(specs: list[ChildSpec], host: str, http_port: int) -> None:
    """A service whose port is taken exits at start and would be restarted for ever: say which
    ports are held instead, before anything starts."""
    from services.cli.ports import taken

    wanted = [(f"{s.service} grpc", s.port) for s in specs]
    wanted += [(f"{s.service} metrics", s.metrics_port) for s in specs if s.metrics_port > 0]
    if http_port > 0:
        wanted.append(("openai api http", http_port))
    if held := taken(host, wanted):
        raise click.ClickException(
            f"already in use: {', '.join(held)} (another mesh, or another program): stop it, or "
            "start this mesh on other ports with --port-offset N"
        )


def mesh_specs(
    profile: SkuProfile,
    host: str,
    port_offset: int,
    dialers: dict[str, Dialer],
    replicas: list[RouterReplica],
    shared: SharedBacking | None = None,
) -> list[ChildSpec]:
    """The processes `forge up` supervises: each service of MESH_SERVICES, the router as each of
    `replicas` (replica 0 named "router", as everything that dials the router expects), told what
    they share when there are several."""
    from services.cli.replicas import replica_env
    from services.cli.supervisor import ChildSpec
    from services.common.isolation import service_environment

    specs = []
    for s in MESH_SERVICES:
        if s != "router":
            specs.append(
                ChildSpec(
                    s,
                    host,
                    DEFAULT_GRPC_PORTS[s] + port_offset,
                    DEFAULT_METRICS_PORTS[s] + port_offset,
                    env=service_environment(profile, s),  # under MPS: the service's pinned memory limit
                    health_dialer=dialers[s],
                )
            )
            continue
        for replica in replicas:
            env = service_environment(profile, s)
            if shared is not None:
                env |= replica_env(replica, len(replicas), shared.admission_url, shared.milvus_uri)
            specs.append(
                ChildSpec(
                    replica.name,
                    host,
                    replica.port,
                    replica.metrics_port,
                    env=env,
                    health_dialer=dialers[s],
                    after=ROUTER_WAITS_FOR,
                    role=s,
                )
            )
    return specs


# A first start of the Milvus server on a busy small machine: well over its usual 10-20 s.
MILVUS_START_TIMEOUT_S = 180.0


def _start_shared(
    stack: contextlib.ExitStack,
    console: UpConsole,
    routers: int,
    home: Path,
    host: str,
    port_offset: int,
    mesh_ports: set[int],
) -> SharedBacking:
    """Start what `routers` replicas share and the operator did not name (FORGE_ROUTER_ADMISSION_URL,
    FORGE_ROUTER_MILVUS_URI): Redis, then the Milvus server (its virtualenv built on first use),
    each stopped when `stack` closes. ClickException when one cannot start."""
    from services.cli import milvus_server, redis_server
    from services.cli.replicas import SharedBacking, milvus_port, redis_port, shared_backing

    try:
        named = shared_backing(routers, os.environ)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    admission_url, milvus_uri = named.admission_url, named.milvus_uri
    kept_redis = None
    if not admission_url:
        port = redis_port(port_offset)
        click.echo(f"Starting Redis on {host}:{port}: the {routers} routers share one session limit in it")
        started = time.monotonic()
        try:
            redis = redis_server.start_redis(port, home / "redis", host, detach=True)
        except redis_server.RedisUnavailable as exc:
            raise click.ClickException(f"Redis did not start: {exc}") from exc
        kept_redis = KeptRedis(redis, home / "redis", host)
        stack.callback(_stopping("Redis", kept_redis.stop))
        console.serving("redis", time.monotonic() - started)
        admission_url = redis.url
    if not milvus_uri:
        venv = milvus_server.venv_dir(home)

        def building(what: str) -> None:
            click.echo(
                f"First use of --routers: building the Milvus server's virtualenv ({what}); minutes, once"
            )

        try:
            executable = milvus_server.ensure_server_venv(venv, on_build=building)
        except milvus_server.ServerVenvUnavailable as exc:
            raise click.ClickException(f"no Milvus server for the routers to share: {exc}") from exc
        port, data = milvus_port(port_offset), home / "milvus-server"
        click.echo(f"Starting a Milvus server on 127.0.0.1:{port}: the routers' documents (data in {data})")
        started = time.monotonic()
        try:
            milvus = milvus_server.start_server(
                executable, data, MILVUS_START_TIMEOUT_S, proxy_port=port, reserved=mesh_ports, detach=True
            )
        except (milvus_server.MilvusUnavailable, TimeoutError) as exc:
            raise click.ClickException(f"the Milvus server did not start: {exc}") from exc
        stack.callback(_stopping("the Milvus server", milvus.stop))
        console.serving("milvus", time.monotonic() - started)
        milvus_uri = milvus.uri
    return SharedBacking(admission_url, milvus_uri, kept_redis)


class KeptRedis:
    """`forge up`'s Redis, started again on its port when it exits. Meanwhile the routers admit
    their share of the limit each; once it is back (empty) they re-register their sessions."""

    def __init__(self, server: Any, work_dir: Path, host: str) -> None:
        self.server = server
        self._work_dir = work_dir
        self._host = host

    def stop(self) -> None:
        self.server.stop()

    async def keep(self, backoff_max_s: float) -> None:
        from services.cli.redis_server import RedisUnavailable, start_redis
        from services.cli.supervisor import describe_exit

        failures = 0
        while True:
            await asyncio.sleep(0.5)  # a supervisor's poll of its child, not a synchronisation
            code = self.server.process.poll()
            if code is None:
                failures = 0
                continue
            delay = min(backoff_max_s, 2.0**failures)
            failures += 1
            click.echo(
                f"redis exited ({describe_exit(code, None)}); restarting in {delay:g} s (the routers "
                "admit their share of the limit each until it is back)",
                err=True,
            )
            await asyncio.sleep(delay)
            try:
                # In this thread: the server is stopped when the thread that started it ends.
                self.server = start_redis(self.server.port, self._work_dir, self._host, detach=True)
            except RedisUnavailable as exc:
                click.echo(f"redis did not start again: {exc}", err=True)
                continue
            click.echo(f"redis SERVING again on {self._host}:{self.server.port}", err=True)


def _stopping(what: str, stop: Callable[[], None]) -> Callable[[], None]:
    def say_and_stop() -> None:
        click.echo(f"Stopping {what}")
        stop()

    return say_and_stop


def _restart_summary(policy: RestartPolicy) -> str:
    """`forge up`'s restart rules in one sentence, for the banner."""
    when = ["exits", f"is not SERVING within {policy.start_timeout_s:g} s of a start"]
    if policy.liveness_timeout_s > 0:
        when.append(f"answers no health check for {policy.liveness_timeout_s:g} s")
    return (
        f"A service that {', '.join(when[:-1])} or {when[-1]} is restarted, waiting "
        f"{policy.backoff_initial_s:g} s doubling up to {policy.backoff_max_s:g} s while it keeps "
        "failing (said on stderr)."
    )


def _first_start_security(home: Path, public_tls: bool) -> tuple[dict[str, Any], Any]:
    """Make what the secure defaults need and is missing (the CA and certificates, the admin key),
    saying so. Returns how `forge up` reaches each service's health, and the TLS folder."""
    import grpc

    from services.common.channels import PLAINTEXT, Dialer
    from services.common.credentials import dialer_for
    from services.common.security.keys import KeyStore, ensure_admin_key
    from services.common.security.settings import SecuritySettings, admin_key_path
    from services.common.security.tls import ensure_tls_dir

    security = SecuritySettings()
    tls_dir, issued = ensure_tls_dir(security.tls_path(home))
    if issued:
        click.echo(f"made the mesh's private CA and certificates for {', '.join(issued)} in {tls_dir.path}")
    if security.auth == "keys":
        keys_file = security.keys_path(home)
        if ensure_admin_key(KeyStore(keys_file), admin_key_path(home)):
            click.echo(
                f"made an admin API key in {admin_key_path(home)} (mode 0600; the CLI uses it unless "
                f"FORGE_API_KEY is set); `forge keys create --tenant NAME` makes tenant keys"
            )
    else:
        click.echo("warning: API keys are off (FORGE_AUTH=off): any caller may act as any tenant", err=True)
    if security.internal_tls == "off":
        click.echo("warning: mutual TLS between services is off (FORGE_INTERNAL_TLS=off)", err=True)
    internal = dialer_for("client", security, home)
    dialers: dict[str, Dialer] = {s: internal for s in MESH_SERVICES}
    dialers["router"] = (
        Dialer(grpc.ssl_channel_credentials(root_certificates=tls_dir.ca_cert.read_bytes()))
        if public_tls
        else PLAINTEXT
    )
    return dialers, tls_dir


cli.add_command(status_command)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="forge")
