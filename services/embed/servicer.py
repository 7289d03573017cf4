"""gRPC adapter of the embeddings service: messages in, domain call, messages out."""

from __future__ import annotations

from forge.v1 import embed_pb2, embed_pb2_grpc
from grpc import aio

from services.common.encoder import EmbedKind
from services.common.errors import InvalidArgument
from services.embed.core import Embedder

_KINDS = {
    embed_pb2.EMBED_KIND_UNSPECIFIED: EmbedKind.DOCUMENT,
    embed_pb2.EMBED_KIND_DOCUMENT: EmbedKind.DOCUMENT,
    embed_pb2.EMBED_KIND_QUERY: EmbedKind.QUERY,
}


class EmbedServicer(embed_pb2_grpc.EmbedServiceServicer):
    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    async def Embed(
        self, request: embed_pb2.EmbedRequest, context: aio.ServicerContext[object, object]
    ) -> embed_pb2.EmbedResponse:
        kind = _KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument(
                "kind", f"must be EMBED_KIND_QUERY or EMBED_KIND_DOCUMENT, got {request.kind}"
            )
        normalize = request.normalize if request.HasField("normalize") else True
        result = await self._embedder.embed(list(request.texts), kind, normalize)
        return embed_pb2.EmbedResponse(
            embeddings=[embed_pb2.Embedding(values=row.tolist()) for row in result.vectors],
            dimension=result.dimension,
            model=result.model,
        )
