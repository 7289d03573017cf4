"""Wires the router into the server kit: settings -> outbound adapters (Milvus, the services'
channels) -> use cases (chat, search, ingest, documents) -> inbound adapters (servicers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from forge.v1 import router_pb2, router_pb2_grpc
from grpc import aio

from services.common.channels import PLAINTEXT, Dialer
from services.common.config import SkuProfile
from services.common.errors import Unavailable
from services.router.admission import AdmissionController
from services.router.admission_metrics import register_admission_metrics
from services.router.api.admin import AdminServicer
from services.router.api.servicer import RouterParts, RouterServicer
from services.router.chunking import Chunker, ChunkingConfig
from services.router.clients.llm_pool import LlmPool, parse_addresses
from services.router.clients.milvus_store import VectorStore
from services.router.clients.services import GrpcEmbeddings, GrpcGuardrails, GrpcLlm, open_channel
from services.router.documents import Documents
from services.router.ingest import Ingestor
from services.router.rag import ChatOrchestrator
from services.router.retrieval import Retriever
from services.router.search import Searcher
from services.router.settings import RouterSettings
from services.router.stages import Rails, StageRunner

log = logging.getLogger(__name__)

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
ADMIN_SERVICE = router_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
EMBED_PROBE_TIMEOUT_S = 5.0


def default_milvus_uri(home: Path) -> str:
    return str(home / "milvus" / "forge.db")


def redact_uri(uri: str) -> str:
    """The URI without credentials (user:password@) or query parameters (tokens), for GetInfo."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return uri  # a local Milvus Lite path
    host = parts.hostname or ""
    netloc = ("***@" if parts.username or parts.password else "") + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


class RouterApp:
    name = "router"

    def __init__(
        self,
        profile: SkuProfile,
        home: Path,
        settings: RouterSettings | None = None,
        dialer: Dialer = PLAINTEXT,
    ) -> None:
        self.profile = profile
        self.settings = settings or RouterSettings()
        self.dialer = dialer
        self.milvus_uri = self.settings.milvus_uri or default_milvus_uri(home)
        self.admission = AdmissionController(profile.admission)
        self._parts: RouterParts | None = None
        self._store: VectorStore | None = None
        self._channels: dict[str, aio.Channel] = {}
        self._llm: LlmPool[aio.Channel] | None = None

    @property
    def grpc_service_names(self) -> Sequence[str]:
        return [ROUTER_SERVICE, ADMIN_SERVICE]

    @property
    def admin_service_names(self) -> Sequence[str]:
        """Services that need an admin key (the kit adds its OpsService)."""
        return [ADMIN_SERVICE]

    def _service_channels(self) -> dict[str, aio.Channel]:
        """Every downstream process, for the GPU ledger: each LLM replica on its own."""
        channels = dict(self._channels)
        if self._llm is not None:
            replicas = self._llm.replicas
            for r in replicas:
                channels["llm" if len(replicas) == 1 else f"llm@{r.address}"] = r.channel
        return channels

    def parts(self) -> RouterParts:
        if self._parts is None:
            raise Unavailable("router", "still starting (opening Milvus)")
        return self._parts

    def register(self, server: aio.Server) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(self.parts), server)
        router_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.profile.name, self.admission, self._service_channels), server
        )
        register_admission_metrics(self.admission)

    async def load(self) -> None:
        s = self.settings
        self._llm = LlmPool(
            parse_addresses(s.llm_addresses) or [s.llm_address],
            lambda address: open_channel(address, "llm", self.dialer),
            GrpcLlm,
            s.llm_replica_cooldown_s,
        )
        self._channels = {
            "embed": open_channel(s.embed_address, "embed", self.dialer),
            "guardrails": open_channel(s.guardrails_address, "guardrails", self.dialer),
        }
        embeddings = GrpcEmbeddings(self._channels["embed"])
        await self._check_dimension(embeddings)
        chunker = await asyncio.to_thread(
            Chunker,
            ChunkingConfig(
                max_tokens=s.chunk_max_tokens,
                overlap_tokens=s.chunk_overlap_tokens,
                max_chars=s.chunk_max_chars,
            ),
        )
        self._store = store = await VectorStore.open(
            self.milvus_uri,
            s.embedding_dimension,
            token=s.milvus_token,
            index_type=s.milvus_index_type,
            default_collection=s.default_collection,
            timeout_s=s.call_timeout_s,
        )
        stages = StageRunner(s)
        rails = Rails(s, GrpcGuardrails(self._channels["guardrails"]), stages)
        retriever = Retriever(stages, rails, embeddings, store)
        self._parts = RouterParts(
            chat=ChatOrchestrator(s, self.admission, stages, rails, retriever, self._llm),
            search=Searcher(s, retriever),
            ingestor=Ingestor(s, chunker, embeddings, store),
            documents=Documents(s, store),
        )

    async def _check_dimension(self, embeddings: GrpcEmbeddings) -> None:
        """A model with another vector size would fail every search; say so at start. An embed
        service that is not up yet is not fatal: the router answers UNAVAILABLE until it is."""
        try:
            dimension = await embeddings.dimension(EMBED_PROBE_TIMEOUT_S)
        except aio.AioRpcError as err:
            log.warning(
                "embed service not answering at start (%s); assuming dimension %d",
                err.code().name,
                self.settings.embedding_dimension,
            )
            return
        if dimension != self.settings.embedding_dimension:
            raise ValueError(
                f"the embed service returns {dimension}-dimensional vectors but "
                f"FORGE_ROUTER_EMBEDDING_DIMENSION is {self.settings.embedding_dimension}"
            )

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        for channel in self._channels.values():
            await channel.close()
        if self._llm is not None:
            await self._llm.close()

    def compute_device(self) -> str:
        return "cpu"

    def settings_summary(self) -> Mapping[str, str]:
        s = self.settings
        a = self.profile.admission
        return {
            "milvus_uri": redact_uri(self.milvus_uri),
            "milvus_token": "set" if s.milvus_token else "",
            "llm": s.llm_addresses or s.llm_address,
            "embed": s.embed_address,
            "guardrails": s.guardrails_address,
            "max_sessions": str(a.max_sessions),
            "max_sessions_per_tenant": str(a.max_sessions_per_tenant),
            "queue_enabled": str(a.queue.enabled).lower(),
            "default_top_k": str(s.default_top_k),
            "on_retrieval_failure": s.on_retrieval_failure,
            "on_guardrails_failure": s.on_guardrails_failure,
        }
