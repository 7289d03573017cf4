"""embed's model dies for real: a device-side assert poisons the process's CUDA context (every
later CUDA call fails), as a faulty kernel or a failing GPU does. The next Embed gets UNAVAILABLE
saying the process is exiting, health turns NOT_SERVING and the server kit is told to fail (the
process then drains and exits 3: tests/integration/test_llm_process.py shows that path for real).
Needs CUDA: skipped elsewhere. A failed batch on a CPU is no death (services/embed/fatal.py)."""

from __future__ import annotations

import grpc
import pytest
from forge.v1 import embed_pb2, embed_pb2_grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.config import load_profile
from services.common.server import ForgeServer, ServerOptions
from services.embed.app import EmbedApp
from services.embed.fatal import model_died
from services.embed.settings import EmbedSettings


def cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def test_a_failed_batch_on_a_cpu_is_no_death() -> None:
    import torch

    with pytest.raises(RuntimeError) as shapes:  # a real error of a model call on a CPU
        torch.zeros(2, 3) @ torch.zeros(2, 3)
    assert not model_died(shapes.value)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda(), reason="needs CUDA")
async def test_a_poisoned_cuda_context_makes_embed_fail_and_exit() -> None:
    import torch

    profile = load_profile("h100", environ={})  # gives embed a GPU slice
    app = EmbedApp(profile, EmbedSettings(device="cuda"))
    server = ForgeServer(app, profile, ServerOptions(port=0, gpu_watch_interval_s=None))
    await server.start()
    try:
        await server.load_and_serve()
        async with aio.insecure_channel(server.address) as channel:
            stub = embed_pb2_grpc.EmbedServiceStub(channel)
            assert (await stub.Embed(embed_pb2.EmbedRequest(texts=["alive"]))).dimension == 384
            # An out-of-bounds index on the device: a device-side assert, sticky for the process.
            with pytest.raises(RuntimeError) as poisoned:
                torch.zeros(2, device="cuda")[torch.tensor([5], device="cuda")].cpu()
                torch.cuda.synchronize()
            assert model_died(poisoned.value)

            with pytest.raises(aio.AioRpcError) as died:
                await stub.Embed(embed_pb2.EmbedRequest(texts=["dead"]), timeout=60)
            assert died.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "model died" in (died.value.details() or "")
            assert server.fatal.is_set() and "embed model died" in (server.fatal_reason or "")
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(aio.AioRpcError) as again:  # no model call: the answer is known
                await stub.Embed(embed_pb2.EmbedRequest(texts=["still dead"]), timeout=10)
            assert again.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop()
