"""Operators' view: the real grpcurl binary against the running embeddings service, no .proto files."""

from __future__ import annotations

import json

from services.common.server import ForgeServer
from tests.helpers import grpcurl


async def test_list_shows_every_service(embed_server: ForgeServer) -> None:
    out = await grpcurl("-plaintext", embed_server.address, "list")
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) >= {
        "forge.v1.EmbedService",
        "forge.v1.OpsService",
        "grpc.health.v1.Health",
    }


async def test_describe_the_service_and_its_request(embed_server: ForgeServer) -> None:
    service = await grpcurl("-plaintext", embed_server.address, "describe", "forge.v1.EmbedService")
    assert service.returncode == 0, service.stderr
    assert "rpc Embed ( .forge.v1.EmbedRequest ) returns ( .forge.v1.EmbedResponse );" in service.stdout
    request = await grpcurl("-plaintext", embed_server.address, "describe", "forge.v1.EmbedRequest")
    assert "repeated string texts = 1;" in request.stdout and "optional bool normalize = 3;" in request.stdout


async def test_embed_call_with_json(embed_server: ForgeServer) -> None:
    body = json.dumps({"texts": ["hello grpcurl", "second text"], "kind": "EMBED_KIND_QUERY"})
    out = await grpcurl("-plaintext", "-d", body, embed_server.address, "forge.v1.EmbedService/Embed")
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["dimension"] == 384 and reply["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert [len(e["values"]) for e in reply["embeddings"]] == [384, 384]


async def test_bad_input_exits_with_invalid_argument(embed_server: ForgeServer) -> None:
    out = await grpcurl(
        "-plaintext", "-d", '{"texts": [""]}', embed_server.address, "forge.v1.EmbedService/Embed"
    )
    assert out.returncode == 64 + 3  # grpcurl exits 64 + status code; INVALID_ARGUMENT = 3
    assert "InvalidArgument" in out.stderr and "texts[0]: must not be empty" in out.stderr


async def test_health_and_ops_through_grpcurl(embed_server: ForgeServer) -> None:
    health = await grpcurl("-plaintext", embed_server.address, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}
    stats = await grpcurl("-plaintext", embed_server.address, "forge.v1.OpsService/GetGpuStats")
    reply = json.loads(stats.stdout)
    assert reply["gpu"]["detail"].startswith("no GPU") and reply["usage"]["service"] == "embed"
