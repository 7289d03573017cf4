"""Keys, tenants, roles and mutual TLS on real processes with the secure defaults, as `forge
serve` runs them: an embed service that speaks only mutual TLS, and a router that takes API keys
on its public port and dials embed over mutual TLS. No double anywhere: real certificates, real
key files, real gRPC, grpcurl as operators use it."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from forge.v1 import embed_pb2, embed_pb2_grpc, ops_pb2, ops_pb2_grpc, router_pb2, router_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.security.keys import KeyStore
from services.common.security.tls import ensure_tls_dir
from tests.helpers import REPO_ROOT, ServiceProcess, bearer, free_port, grpcurl, mesh_dialer, mesh_tls

pytestmark = pytest.mark.slow
MILVUS_TOKEN = "root:s3cret-milvus-password"


@dataclass
class Mesh:
    home: Path
    embed: ServiceProcess
    router: ServiceProcess
    keys: KeyStore
    admin_key: str
    acme_key: str
    beta_key: str

    @property
    def router_address(self) -> str:
        return f"127.0.0.1:{self.router.port}"

    @property
    def embed_address(self) -> str:
        return f"127.0.0.1:{self.embed.port}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secure-home")


@pytest.fixture(scope="module")
async def mesh(home: Path) -> AsyncIterator[Mesh]:
    keys = KeyStore(home / "keys" / "keys.yaml")
    admin_key, acme_key, beta_key = keys.create("ops", "admin"), keys.create("acme"), keys.create("beta")
    embed = ServiceProcess("embed", env={"FORGE_HOME": str(home)})
    unused = f"127.0.0.1:{free_port()}"
    router_env = {
        "FORGE_HOME": str(home),
        "FORGE_ROUTER_LLM_ADDRESS": unused,
        "FORGE_ROUTER_GUARDRAILS_ADDRESS": unused,
        "FORGE_ROUTER_MILVUS_TOKEN": MILVUS_TOKEN,
        "FORGE_ROUTER_GUARDRAILS_ENABLED": "false",  # not the subject here; keeps the mesh small
        "FORGE_ROUTER_READINESS_DEPENDENCIES": "embed",  # the LLM address leads nowhere
    }
    try:
        await embed.start()
        await embed.next_event("serving", timeout_s=180)
        router = ServiceProcess(
            "router", env={**router_env, "FORGE_ROUTER_EMBED_ADDRESS": f"127.0.0.1:{embed.port}"}
        )
        await router.start()
        await router.next_event("serving", timeout_s=180)
        yield Mesh(home, embed, router, keys, admin_key, acme_key, beta_key)
    finally:
        for process in (locals().get("router"), embed):
            if isinstance(process, ServiceProcess):
                await process.kill()


@pytest.fixture
async def router(mesh: Mesh) -> AsyncIterator[router_pb2_grpc.RouterServiceAsyncStub]:
    async with aio.insecure_channel(mesh.router_address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()


async def ingest(
    stub: router_pb2_grpc.RouterServiceAsyncStub, metadata: tuple[tuple[str, str], ...], doc: str
) -> None:
    request = router_pb2.IngestRequest(
        document=router_pb2.Document(id=doc, text=f"{doc}: the boiler pressure is 2.1 bar.")
    )
    replies = [r async for r in stub.Ingest(iter([request]), metadata=metadata, timeout=120)]
    assert replies[-1].documents_ingested == 1


Metadata = tuple[tuple[str, str], ...]


async def hits(stub: router_pb2_grpc.RouterServiceAsyncStub, metadata: Metadata) -> set[str]:
    reply = await stub.Search(
        router_pb2.SearchRequest(query="boiler pressure", top_k=10), metadata=metadata, timeout=60
    )
    return {h.document_id for h in reply.hits}


async def test_no_key_or_a_bad_key_is_unauthenticated_and_health_stays_open(
    mesh: Mesh, router: router_pb2_grpc.RouterServiceAsyncStub
) -> None:
    search = router_pb2.SearchRequest(query="anything")
    for metadata in (
        (),
        (("authorization", "Bearer fk_00000000_" + "x" * 43),),
        (("authorization", mesh.acme_key),),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await router.Search(search, metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        assert "API key" in (err.value.details() or "")
    async with aio.insecure_channel(mesh.router_address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_key_decides_the_tenant(mesh: Mesh, router: router_pb2_grpc.RouterServiceAsyncStub) -> None:
    await ingest(router, bearer(mesh.acme_key), "acme-boiler.md")
    assert "acme-boiler.md" in await hits(router, bearer(mesh.acme_key))
    assert "acme-boiler.md" in await hits(router, bearer(mesh.acme_key, "acme"))  # naming its own
    assert "acme-boiler.md" not in await hits(router, bearer(mesh.beta_key))
    # A tenant key naming another tenant is refused, on reads and on writes.
    for call in (
        router.Search(
            router_pb2.SearchRequest(query="boiler"), metadata=bearer(mesh.beta_key, "acme"), timeout=10
        ),
        router.DeleteDocuments(
            router_pb2.DeleteDocumentsRequest(document_ids=["acme-boiler.md"]),
            metadata=bearer(mesh.beta_key, "acme"),
            timeout=10,
        ),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not act for tenant 'acme'" in (err.value.details() or "")
    assert "acme-boiler.md" in await hits(router, bearer(mesh.acme_key))  # the delete did not happen
    # The admin key acts for any tenant it names.
    assert "acme-boiler.md" in await hits(router, bearer(mesh.admin_key, "acme"))


async def test_admin_rpcs_need_the_admin_key_and_get_info_shows_no_credentials(mesh: Mesh) -> None:
    async with aio.insecure_channel(mesh.router_address) as channel:
        admin, ops = router_pb2_grpc.AdminServiceStub(channel), ops_pb2_grpc.OpsServiceStub(channel)
        for call in (
            admin.GetCapacity(router_pb2.GetCapacityRequest(), metadata=bearer(mesh.acme_key), timeout=10),
            admin.GetGpuStats(
                router_pb2.AdminServiceGetGpuStatsRequest(), metadata=bearer(mesh.acme_key), timeout=10
            ),
            ops.GetInfo(ops_pb2.GetInfoRequest(), metadata=bearer(mesh.acme_key), timeout=10),
        ):
            assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
        capacity = await admin.GetCapacity(
            router_pb2.GetCapacityRequest(), metadata=bearer(mesh.admin_key), timeout=10
        )
        assert capacity.max_sessions > 0
        info = await ops.GetInfo(ops_pb2.GetInfoRequest(), metadata=bearer(mesh.admin_key), timeout=10)
    assert info.settings["auth"] == "keys" and info.settings["transport"] == "plaintext"
    assert "s3cret" not in str(info) and info.settings["milvus_token"] == "set"


async def test_a_revoked_key_is_refused_within_5_s_without_a_restart(
    mesh: Mesh, router: router_pb2_grpc.RouterServiceAsyncStub
) -> None:
    key = mesh.keys.create("gamma")
    await router.ListCollections(router_pb2.ListCollectionsRequest(), metadata=bearer(key), timeout=10)
    revoke = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "--home",
        str(mesh.home),
        "keys",
        "revoke",
        key.split("_")[1],
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await revoke.communicate()
    assert revoke.returncode == 0 and b"revoked" in out
    revoked_at = time.monotonic()
    while True:
        try:
            await router.ListCollections(
                router_pb2.ListCollectionsRequest(), metadata=bearer(key), timeout=10
            )
        except aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() - revoked_at < 5, "the revoked key still works after 5 s"
        await asyncio.sleep(0.1)
    # The router did not restart: the same process, other keys unaffected.
    assert mesh.router.proc is not None and mesh.router.proc.returncode is None
    await router.ListCollections(
        router_pb2.ListCollectionsRequest(), metadata=bearer(mesh.acme_key), timeout=10
    )


async def test_undecodable_bodies_are_invalid_argument_naming_the_message(mesh: Mesh) -> None:
    garbage = b"\xff\xff\xff\xff"
    async with aio.insecure_channel(mesh.router_address) as channel:
        search: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/forge.v1.RouterService/Search"
        )
        chat: aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(
            "/forge.v1.RouterService/Chat"
        )
        ingest_stream: aio.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(
            "/forge.v1.RouterService/Ingest"
        )
        with pytest.raises(aio.AioRpcError) as err:
            await search(garbage, metadata=bearer(mesh.acme_key), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid forge.v1.SearchRequest" in (err.value.details() or "")
        with pytest.raises(aio.AioRpcError) as err:
            async for _ in chat(garbage, metadata=bearer(mesh.acme_key), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "forge.v1.ChatRequest" in (err.value.details() or "")
        with pytest.raises(aio.AioRpcError) as err:
            async for _ in ingest_stream(iter([garbage]), metadata=bearer(mesh.acme_key), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "forge.v1.IngestRequest" in (err.value.details() or "")
        # Without a key the body is never read: the caller hears about the key first.
        with pytest.raises(aio.AioRpcError) as err:
            await search(garbage, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/grpc.health.v1.Health/Check"
        )
        with pytest.raises(aio.AioRpcError) as err:
            await health(garbage, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "grpc.health.v1.HealthCheckRequest" in (err.value.details() or "")
    async with mesh.embed.channel() as channel:
        with pytest.raises(aio.AioRpcError) as err:
            embed: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                "/forge.v1.EmbedService/Embed"
            )
            await embed(garbage, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "forge.v1.EmbedRequest" in (err.value.details() or "")


async def embed_once(channel: aio.Channel) -> int:
    reply = await embed_pb2_grpc.EmbedServiceStub(channel).Embed(
        embed_pb2.EmbedRequest(texts=["hi"]), timeout=10
    )
    return len(reply.embeddings)


async def test_internal_services_take_only_the_mesh_certificate(mesh: Mesh, tmp_path: Path) -> None:
    async with aio.insecure_channel(mesh.embed_address) as plaintext:
        assert await code_of(embed_once(plaintext)) == grpc.StatusCode.UNAVAILABLE
    # TLS without a client certificate, and with one from another CA.
    no_cert = grpc.ssl_channel_credentials(root_certificates=mesh_tls(mesh.home).ca_cert.read_bytes())
    async with aio.secure_channel(
        mesh.embed_address, no_cert, options=(("grpc.ssl_target_name_override", "embed"),)
    ) as anonymous:
        assert await code_of(embed_once(anonymous)) == grpc.StatusCode.UNAVAILABLE
    ensure_tls_dir(tmp_path / "other-ca")
    stranger = mesh_dialer("client", tmp_path)  # tmp_path/tls: a CA of its own
    async with stranger.channel(mesh.embed_address, "embed") as channel:
        assert await code_of(embed_once(channel)) == grpc.StatusCode.UNAVAILABLE
    async with mesh.embed.channel() as channel:  # the operator's certificate
        assert await embed_once(channel) == 1


def grpcurl_tls(home: Path) -> list[str]:
    tls = mesh_tls(home)
    return ["-cacert", str(tls.ca_cert), "-cert", str(tls.cert("client")), "-key", str(tls.key("client"))]


async def test_grpcurl_as_the_readme_shows(mesh: Mesh) -> None:
    listed = await grpcurl(
        "-plaintext", "-H", f"authorization: Bearer {mesh.admin_key}", mesh.router_address, "list"
    )
    assert listed.returncode == 0 and "forge.v1.RouterService" in listed.stdout, listed.stderr
    refused = await grpcurl("-plaintext", mesh.router_address, "list")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    internal = await grpcurl(*grpcurl_tls(mesh.home), mesh.embed_address, "list")
    assert internal.returncode == 0 and "forge.v1.EmbedService" in internal.stdout, internal.stderr
    plaintext = await grpcurl("-plaintext", mesh.embed_address, "list")
    assert plaintext.returncode != 0


async def test_certificates_reload_on_file_change_and_sighup_without_a_restart(
    mesh: Mesh, tmp_path: Path
) -> None:
    """Last in the module: it replaces the mesh's CA under the running embed service."""
    rotated, _ = ensure_tls_dir(tmp_path / "tls")  # a new CA with its own certificates
    live = mesh_tls(mesh.home)
    old_client = mesh_dialer("client", mesh.home)
    for name in ("ca.crt", "embed.crt", "embed.key"):
        shutil.copy(rotated.path / name, live.path / f".{name}.new")
        (live.path / f".{name}.new").replace(live.path / name)
    new_client = mesh_dialer("client", tmp_path)
    async with new_client.channel(mesh.embed_address, "embed") as channel:
        assert await embed_once(channel) == 1  # a new connection: the new CA and certificate
    async with old_client.channel(mesh.embed_address, "embed") as channel:
        assert await code_of(embed_once(channel)) == grpc.StatusCode.UNAVAILABLE
    assert mesh.embed.proc is not None
    mesh.embed.signal(signal.SIGHUP)  # also a reload, never a stop
    async with new_client.channel(mesh.embed_address, "embed") as channel:
        assert await embed_once(channel) == 1
    assert mesh.embed.proc.returncode is None
