"""The embeddings service over real gRPC with the real all-MiniLM-L6-v2 model."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from forge.v1 import embed_pb2, embed_pb2_grpc, ops_pb2, ops_pb2_grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.common.encoder import EmbedKind, SentenceEncoder, Vectors
from services.common.server import ForgeServer
from services.embed.app import EmbedApp
from tests.helpers import app_of, metric_value, metrics_url, scrape

SENTENCES = [
    "The Eiffel Tower is in Paris.",
    "Transformers map tokens to vectors.",
    "A Tesla P40 has 24 GB of memory.",
    "Milvus stores embeddings for similarity search.",
    "The router admits at most eight sessions on an RTX Pro 4000.",
    "Bread rises because yeast produces carbon dioxide.",
    "gRPC streams messages over HTTP/2.",
    "Jetson Thor shares 128 GB of memory between CPU and GPU.",
]
UNSPECIFIED = embed_pb2.EMBED_KIND_UNSPECIFIED
UNKNOWN_KIND = embed_pb2.EmbedKind.ValueType(99)  # a client built against a newer .proto


def stub(channel: aio.Channel) -> embed_pb2_grpc.EmbedServiceAsyncStub:
    return embed_pb2_grpc.EmbedServiceStub(channel)


def vectors(response: embed_pb2.EmbedResponse) -> Vectors:
    return np.array([list(e.values) for e in response.embeddings], dtype=np.float32)


def encoder_of(server: ForgeServer) -> SentenceEncoder:
    encoder = app_of(server, EmbedApp).embedder.encoder
    assert encoder is not None, "served before its model was loaded"
    return encoder


async def test_health_is_serving_once_loaded(embed_channel: aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(embed_channel)
    for service in ("", "forge.v1.EmbedService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_concurrent_callers_get_the_vectors_of_a_direct_encode(
    embed_server: ForgeServer, embed_channel: aio.Channel
) -> None:
    """Each caller's vectors equal SentenceTransformer.encode of its own text, though the service
    merged the callers into shared batches."""
    texts = [f"{s} (variant {i})" for i in range(4) for s in SENTENCES]
    url = metrics_url(embed_server)
    batches_before = metric_value(scrape(url), "forge_embed_batch_size_count")
    replies = await asyncio.gather(
        *(stub(embed_channel).Embed(embed_pb2.EmbedRequest(texts=[t])) for t in texts)
    )
    served = np.concatenate([vectors(r) for r in replies])

    encoder = encoder_of(embed_server)
    direct = np.stack([encoder.model.encode_document([t])[0] for t in texts])
    np.testing.assert_allclose(served, direct, atol=1e-4)
    assert all(r.dimension == 384 and r.model == "sentence-transformers/all-MiniLM-L6-v2" for r in replies)

    batches = metric_value(scrape(url), "forge_embed_batch_size_count") - batches_before
    assert 1 <= batches < len(texts), f"{len(texts)} concurrent requests ran as {batches} model calls"


async def test_query_and_document_kinds_and_normalisation(
    embed_server: ForgeServer, embed_channel: aio.Channel
) -> None:
    query = await stub(embed_channel).Embed(
        embed_pb2.EmbedRequest(texts=["where is the Eiffel Tower?"], kind=embed_pb2.EMBED_KIND_QUERY)
    )
    docs = await stub(embed_channel).Embed(
        embed_pb2.EmbedRequest(texts=SENTENCES, kind=embed_pb2.EMBED_KIND_DOCUMENT)
    )
    q, d = vectors(query)[0], vectors(docs)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    assert int(np.argmax(d @ q)) == 0  # retrieval works: the Paris sentence is nearest
    encoder = encoder_of(embed_server)
    np.testing.assert_allclose(
        q, encoder.encode(EmbedKind.QUERY, ["where is the Eiffel Tower?"])[0], atol=1e-4
    )


async def test_unnormalised_vectors_are_the_models_own(
    embed_server: ForgeServer, embed_channel: aio.Channel
) -> None:
    reply = await stub(embed_channel).Embed(embed_pb2.EmbedRequest(texts=[SENTENCES[0]], normalize=False))
    encoder = encoder_of(embed_server)
    np.testing.assert_allclose(
        vectors(reply)[0], encoder.encode(EmbedKind.DOCUMENT, [SENTENCES[0]])[0], atol=1e-4
    )


@pytest.mark.parametrize(
    ("texts", "kind", "field", "message"),
    [
        ([], UNSPECIFIED, "texts", "must hold 1 to 256 texts, got none"),
        (["ok", ""], UNSPECIFIED, "texts[1]", "must not be empty or only whitespace"),
        (["ok", "   \n"], UNSPECIFIED, "texts[1]", "must not be empty or only whitespace"),
        (["x"] * 257, UNSPECIFIED, "texts", "must hold at most 256 texts, got 257"),
        (["y" * 8193], UNSPECIFIED, "texts[0]", "must be at most 8192 characters, got 8193"),
        (["fine"], UNKNOWN_KIND, "kind", "must be EMBED_KIND_QUERY or EMBED_KIND_DOCUMENT, got 99"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_field_and_limit(
    embed_channel: aio.Channel,
    texts: list[str],
    kind: embed_pb2.EmbedKind.ValueType,
    field: str,
    message: str,
) -> None:
    with pytest.raises(aio.AioRpcError) as failure:
        await stub(embed_channel).Embed(embed_pb2.EmbedRequest(texts=texts, kind=kind))
    err = failure.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"{field}: {message}"
    status = rpc_status.from_call(err)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == field


async def test_ops_reports_settings_and_no_gpu(embed_channel: aio.Channel) -> None:
    ops = ops_pb2_grpc.OpsServiceStub(embed_channel)
    info = await ops.GetInfo(ops_pb2.GetInfoRequest())
    assert info.service == "embed" and info.profile == "cpu" and info.isolation == "none"
    assert info.settings["max_batch_size"] == "32" and info.settings["device"] == "cpu"
    stats = await ops.GetGpuStats(ops_pb2.GetGpuStatsRequest())
    assert not stats.gpu.gpu_available and stats.gpu.detail.startswith("no GPU")
    assert stats.usage.service == "embed" and stats.usage.device == "cpu" and not stats.usage.over_slice


async def test_metrics_endpoint(embed_server: ForgeServer, embed_channel: aio.Channel) -> None:
    with pytest.raises(aio.AioRpcError):
        await stub(embed_channel).Embed(embed_pb2.EmbedRequest(texts=[]))
    text = scrape(metrics_url(embed_server))
    assert (
        metric_value(
            text, "forge_grpc_server_handled_total", {"grpc_method": "Embed", "grpc_code": "INVALID_ARGUMENT"}
        )
        >= 1
    )
    assert metric_value(text, "forge_embed_texts_total", {"kind": "document"}) >= 1
    assert 'forge_gpu_memory_used_bytes{service="embed"} 0.0' in text
    assert "forge_gpu_available 0.0" in text
