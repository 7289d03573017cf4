from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from grpc import aio

from services.common.config import load_profile
from services.common.server import ForgeServer, ServerOptions
from services.embed.app import EmbedApp
from services.embed.settings import EmbedSettings
from tests.helpers import forge_test_home


@pytest.fixture(scope="session")
async def embed_server() -> AsyncIterator[ForgeServer]:
    """The real embeddings service (real model, real gRPC on a loopback port), once per session."""
    profile = load_profile("cpu", environ={})
    app = EmbedApp(profile, EmbedSettings(max_batch_size=32, max_wait_ms=5))
    server = ForgeServer(app, profile, ServerOptions(port=0, metrics_port=0))
    await server.start()
    await server.load_and_serve()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def embed_channel(embed_server: ForgeServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(embed_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
async def llm_server() -> AsyncIterator[ForgeServer]:
    """The real LLM service on the real vLLM engine (SmolLM2-135M), once per session (~1 min on CPU).
    Four sequences, so capacity tests need only four streams."""
    from services.llm.app import LlmApp
    from services.llm.settings import LlmSettings

    profile = load_profile("cpu", environ={})
    app = LlmApp(profile, forge_test_home(), LlmSettings(max_num_seqs=4, max_model_len=2048))
    server = ForgeServer(app, profile, ServerOptions(port=0))
    await server.start()
    await server.load_and_serve()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def llm_channel(llm_server: ForgeServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(llm_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
async def llama_cpp_server() -> AsyncIterator[ForgeServer]:
    """The LLM service on llama.cpp (the Tesla P40 engine) with the packaged GGUF as is."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra: llamacpp)")
    from services.llm.app import LlmApp
    from services.llm.settings import LlmSettings

    profile = load_profile("cpu", environ={})
    settings = LlmSettings(engine="llama_cpp", max_num_seqs=4, max_model_len=2048)
    server = ForgeServer(LlmApp(profile, forge_test_home(), settings), profile, ServerOptions(port=0))
    await server.start()
    await server.load_and_serve()
    yield server
    await server.stop()


@pytest.fixture(params=["vllm", "llama_cpp"])
def any_llm_server(request: pytest.FixtureRequest) -> ForgeServer:
    """Each LLM engine in turn: both must pass the same service contract."""
    server: ForgeServer = request.getfixturevalue(
        "llm_server" if request.param == "vllm" else "llama_cpp_server"
    )
    return server


@pytest.fixture
async def any_llm_channel(any_llm_server: ForgeServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(any_llm_server.address) as channel:
        yield channel
