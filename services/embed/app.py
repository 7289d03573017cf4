"""Wires the embeddings service into the server kit: settings -> model -> batcher -> servicer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from forge.v1 import embed_pb2, embed_pb2_grpc
from grpc import aio

from services.common.config import SkuProfile
from services.common.encoder import SentenceEncoder
from services.common.isolation import torch_memory_cap
from services.common.torch_device import apply_gpu_slice, choose_device
from services.embed.core import Embedder
from services.embed.servicer import EmbedServicer
from services.embed.settings import EmbedSettings

EMBED_SERVICE = embed_pb2.DESCRIPTOR.services_by_name["EmbedService"].full_name


class EmbedApp:
    name = "embed"

    def __init__(self, profile: SkuProfile, settings: EmbedSettings | None = None) -> None:
        self.profile = profile
        self.settings = settings or EmbedSettings()
        self.embedder = Embedder(self.settings)
        self._device = "cpu"

    @property
    def grpc_service_names(self) -> Sequence[str]:
        return [EMBED_SERVICE]

    def bind_fatal(self, fail: Callable[[str], None]) -> None:
        """A sticky device error of the model (services/embed/fatal.py) ends the process."""
        self.embedder.on_model_died = fail

    def register(self, server: aio.Server) -> None:
        embed_pb2_grpc.add_EmbedServiceServicer_to_server(EmbedServicer(self.embedder), server)

    async def load(self) -> None:
        slice_fraction = self.profile.slices.of(self.name)
        self._device = await asyncio.to_thread(choose_device, self.name, self.settings.device, slice_fraction)
        # Isolation none: no cap of our own (the operator accepted the risk).
        if (cap := torch_memory_cap(self.profile, self.name)) is not None:
            await asyncio.to_thread(apply_gpu_slice, self._device, cap)
        encoder = await asyncio.to_thread(SentenceEncoder.load, self.settings.model_path, self._device)
        self.embedder.attach(encoder)

    async def close(self) -> None:
        await self.embedder.close()

    def compute_device(self) -> str:
        return self._device

    def settings_summary(self) -> Mapping[str, str]:
        encoder = self.embedder.encoder
        return {
            "model": encoder.name if encoder else "(loading)",
            "dimension": str(encoder.dimension) if encoder else "",
            "device": self._device,
            "max_batch_size": str(self.settings.max_batch_size),
            "max_wait_ms": str(self.settings.max_wait_ms),
            "max_texts_per_request": str(self.settings.max_texts_per_request),
            "max_chars_per_text": str(self.settings.max_chars_per_text),
            "max_queued_texts": str(self.settings.max_queued_texts),
        }
