"""Wires the router into the server kit: settings -> outbound adapters (Milvus, the services'
channels) -> use cases (chat, search, ingest, documents) -> inbound adapters (servicers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from forge.v1 import router_pb2, router_pb2_grpc
from grpc import aio

from services.common.channels import PLAINTEXT, Dialer
from services.common.config import SkuProfile
from services.common.errors import Unavailable
from services.router import metrics
from services.router.admission import AdmissionController
from services.router.admission_metrics import register_admission_metrics
from services.router.api.admin import AdminServicer
from services.router.api.servicer import RouterParts, RouterServicer
from services.router.chunking import Chunker, ChunkingConfig
from services.router.clients.llm_pool import LlmPool, parse_addresses
from services.router.clients.milvus_store import VectorStore
from services.router.clients.services import (
    GrpcEmbeddings,
    GrpcGuardrails,
    GrpcLlm,
    open_channel,
    watch_health,
)
from services.router.documents import Documents
from services.router.ingest import Ingestor
from services.router.rag import ChatOrchestrator
from services.router.readiness import Readiness, follow
from services.router.retrieval import Retriever
from services.router.search import Searcher
from services.router.settings import RouterSettings
from services.router.shared_admission import (
    SharedAdmissionController,
    SharedAdmissionSettings,
    default_replica_id,
)
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


def admission_controller(profile: SkuProfile, settings: RouterSettings) -> AdmissionController:
    """In process (one router), or shared through Redis when FORGE_ROUTER_ADMISSION_URL is set."""
    config = profile.admission
    if settings.admission_max_sessions:
        config = config.model_copy(update={"max_sessions": settings.admission_max_sessions})
    if not settings.admission_url:
        return AdmissionController(config)
    shared = SharedAdmissionSettings(
        url=settings.admission_url,
        replica_id=settings.replica_id or default_replica_id(),
        replicas=settings.admission_replicas,
        lease_ttl_s=settings.admission_lease_ttl_s,
        key_prefix=settings.admission_key_prefix,
    )
    return SharedAdmissionController(config, shared)


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
        self.admission = admission_controller(profile, self.settings)
        self._parts: RouterParts | None = None
        self._store: VectorStore | None = None
        self._channels: dict[str, aio.Channel] = {}
        self._llm: LlmPool[aio.Channel] | None = None
        # NOT_SERVING until every dependency it needs is (load() waits); then each one's health
        # shows beside the router's own: entries "dependency/<name>", a gauge, GetInfo.
        self.readiness = Readiness(
            self.settings.watched_dependencies(),
            self.settings.required_dependencies(),
            self._dependency_changed,
        )
        self._set_entry: Callable[[str, bool], None] | None = None
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def dependencies(self) -> Readiness:
        """What the router waits for and how each dependency is (OpsService.GetInfo)."""
        return self.readiness

    def bind_health_entries(self, set_entry: Callable[[str, bool], None]) -> None:
        self._set_entry = set_entry

    def _dependency_changed(self, dependency: str, up: bool) -> None:
        metrics.DEPENDENCY_UP.labels(dependency).set(1 if up else 0)
        if self._set_entry is not None:
            self._set_entry(f"dependency/{dependency}", up)

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
            waits = self.readiness.describe_waits() or "its last checks"
            raise Unavailable("router", f"not serving yet: waiting for {waits}")
        return self._parts

    def register(self, server: aio.Server) -> None:
        router_pb2_grpc.add_RouterServiceServicer_to_server(RouterServicer(self.parts), server)
        router_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.profile.name, self.admission, self._service_channels), server
        )
        register_admission_metrics(self.admission)

    async def load(self) -> None:
        s = self.settings
        await self.admission.start()
        self._llm = LlmPool(
            parse_addresses(s.llm_addresses) or [s.llm_address],
            lambda address: open_channel(address, "llm", self.dialer),
            lambda channel: GrpcLlm(channel, s.generation_idle_timeout_s),
            s.llm_replica_cooldown_s,
        )
        self._channels = {
            "embed": open_channel(s.embed_address, "embed", self.dialer),
            "guardrails": open_channel(s.guardrails_address, "guardrails", self.dialer),
        }
        self.readiness.announce()  # every entry and gauge exists, down, until heard otherwise
        self._watch_dependencies(self._llm)
        embeddings = GrpcEmbeddings(self._channels["embed"])
        # Milvus opens and the chunker loads while the dependencies come up; no timeout on the
        # wait: whoever starts the router (forge up, Kubernetes) bounds its start.
        async with asyncio.TaskGroup() as starting:
            opening = starting.create_task(self._open_store())
            chunking = starting.create_task(
                asyncio.to_thread(
                    Chunker,
                    ChunkingConfig(
                        max_tokens=s.chunk_max_tokens,
                        overlap_tokens=s.chunk_overlap_tokens,
                        max_chars=s.chunk_max_chars,
                    ),
                )
            )
            starting.create_task(self.readiness.wait())
        store, chunker = opening.result(), chunking.result()
        await self._check_dimension(embeddings)
        stages = StageRunner(s)
        rails = Rails(s, GrpcGuardrails(self._channels["guardrails"]), stages)
        retriever = Retriever(stages, rails, embeddings, store)
        self._parts = RouterParts(
            chat=ChatOrchestrator(s, self.admission, stages, rails, retriever, self._llm),
            search=Searcher(s, retriever),
            ingestor=Ingestor(s, chunker, embeddings, store),
            documents=Documents(s, store),
        )

    def _watch_dependencies(self, llm: LlmPool[aio.Channel]) -> None:
        """Follow each watched dependency's grpc.health.v1 over the channels the calls use."""

        def one(name: str) -> Callable[[], Coroutine[Any, Any, dict[str, aio.Channel]]]:
            async def channels() -> dict[str, aio.Channel]:
                return {name: self._channels[name]}

            return channels

        for name in self.readiness.watched:
            if name == "llm":
                watch = follow(self.readiness, name, llm.channels, watch_health, llm.refresh_every_s)
            else:
                watch = follow(self.readiness, name, one(name), watch_health)
            task = asyncio.create_task(watch, name=f"watch {name}")
            task.add_done_callback(_log_watch_end)
            self._watchers.append(task)

    async def _open_store(self) -> VectorStore:
        s = self.settings
        self._store = store = await VectorStore.open(
            self.milvus_uri,
            s.embedding_dimension,
            token=s.milvus_token,
            index_type=s.milvus_index_type,
            default_collection=s.default_collection,
            timeout_s=s.call_timeout_s,
            writer_grace_s=s.milvus_writer_grace_s,
        )
        self.readiness.opened()
        return store

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
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self._store is not None:
            await self._store.close()
        for channel in self._channels.values():
            await channel.close()
        if self._llm is not None:
            await self._llm.close()
        await self.admission.close()

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
            "max_sessions": str(self.admission.config.max_sessions),
            "max_sessions_per_tenant": str(a.max_sessions_per_tenant),
            "queue_enabled": str(a.queue.enabled).lower(),
            "admission_url": redact_uri(s.admission_url) if s.admission_url else "",
            "admission_replicas": str(s.admission_replicas),
            "default_top_k": str(s.default_top_k),
            "on_retrieval_failure": s.on_retrieval_failure,
            "on_guardrails_failure": s.on_guardrails_failure,
            "readiness_dependencies": ",".join(s.required_dependencies()),
            "generation_idle_timeout_s": f"{s.generation_idle_timeout_s:g}",
            "stream_write_timeout_s": f"{s.stream_write_timeout_s:g}",
            "ingest_idle_timeout_s": f"{s.ingest_idle_timeout_s:g}",
        }


def _log_watch_end(task: asyncio.Task[None]) -> None:
    """A watch ends only when cancelled (close); anything else is a bug worth a loud log."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended: %s", task.get_name(), task.exception(), exc_info=task.exception())
