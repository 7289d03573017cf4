"""On a real GPU: the embeddings service computes on CUDA inside its slice, NVML sees it by pid,
and an allocation beyond the slice fails in this process while the service keeps answering."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
from forge.v1 import embed_pb2, embed_pb2_grpc, ops_pb2, ops_pb2_grpc
from grpc import aio

from services.common.config import load_profile
from services.common.gpu import read_gpu_snapshot
from services.common.server import ForgeServer, ServerOptions
from services.embed.app import EmbedApp
from services.embed.settings import EmbedSettings

pytestmark = pytest.mark.gpu


async def test_embed_runs_inside_its_slice_under_load(record_figure: Callable[..., Any]) -> None:
    import torch

    profile = load_profile("h100", environ={"FORGE_PROFILE__SLICES__EMBED": "0.05"})
    app = EmbedApp(profile, EmbedSettings(max_batch_size=64))
    server = ForgeServer(app, profile, ServerOptions(port=0))
    await server.start()
    await server.load_and_serve()
    try:
        assert app.compute_device() == "cuda:0"
        async with aio.insecure_channel(server.address) as channel:
            stub = embed_pb2_grpc.EmbedServiceStub(channel)
            texts = [f"load test sentence number {i} " * 20 for i in range(128)]
            await asyncio.gather(*(stub.Embed(embed_pb2.EmbedRequest(texts=texts)) for _ in range(16)))
            usage = (
                await ops_pb2_grpc.OpsServiceStub(channel).GetGpuStats(ops_pb2.GetGpuStatsRequest())
            ).usage
        total = read_gpu_snapshot().total_bytes()
        assert usage.slice_bytes == int(0.05 * total)
        assert usage.used_bytes > 0, "NVML should attribute this process's memory to embed"
        peak = torch.cuda.max_memory_reserved(0)
        assert peak <= usage.slice_bytes, f"torch reserved {peak} bytes, slice is {usage.slice_bytes}"
        print(
            f"\nGPU slice: embed peak reserved {peak / 2**20:.0f} MiB, "
            f"NVML process {usage.used_bytes / 2**20:.0f} MiB, "
            f"slice {usage.slice_bytes / 2**20:.0f} MiB, pid {os.getpid()}"
        )
        record_figure("embed (in-process)", usage.slice_bytes, peak, "torch max_memory_reserved")
        record_figure("embed (in-process)", usage.slice_bytes, usage.used_bytes, "NVML per process")

        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.06 * total), dtype=torch.uint8, device="cuda:0")
        async with aio.insecure_channel(server.address) as channel:
            reply = await embed_pb2_grpc.EmbedServiceStub(channel).Embed(
                embed_pb2.EmbedRequest(texts=["still up"])
            )
        assert reply.dimension == 384
    finally:
        await server.stop()
