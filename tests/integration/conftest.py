from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import pytest
from grpc import aio

from services.common.config import load_profile
from services.common.server import ForgeServer
from services.embed.app import EmbedApp
from services.embed.settings import EmbedSettings
from tests.helpers import forge_test_home, serving


@pytest.fixture(scope="session")
async def embed_server() -> AsyncIterator[ForgeServer]:
    """The real embeddings service (real model, real gRPC on a loopback port), once per session."""
    app = EmbedApp(load_profile("cpu", environ={}), EmbedSettings(max_batch_size=32, max_wait_ms=5))
    async with serving(app, metrics=True) as server:
        yield server


@pytest.fixture(scope="session")
async def embed_channel(embed_server: ForgeServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(embed_server.address) as channel:
        yield channel


async def _llm_service(engine: Literal["vllm", "llama_cpp"]) -> AsyncIterator[ForgeServer]:
    """The LLM service on a real engine with SmolLM2-135M. Four sequences, so capacity tests need
    only four streams."""
    from services.llm.app import LlmApp
    from services.llm.settings import LlmSettings

    settings = LlmSettings(engine=engine, max_num_seqs=4, max_model_len=2048)
    async with serving(LlmApp(load_profile("cpu", environ={}), forge_test_home(), settings)) as server:
        yield server


@pytest.fixture(scope="session")
async def llm_server() -> AsyncIterator[ForgeServer]:
    """vLLM (~1 min to start on CPU), once per session."""
    async for server in _llm_service("vllm"):
        yield server


@pytest.fixture(scope="session")
async def llm_channel(llm_server: ForgeServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(llm_server.address) as channel:
        yield channel


@pytest.fixture(scope="session")
async def llama_cpp_server() -> AsyncIterator[ForgeServer]:
    """llama.cpp (the Tesla P40 engine) with the packaged GGUF as is, once per session."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra: llamacpp)")
    async for server in _llm_service("llama_cpp"):
        yield server


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


@pytest.fixture(scope="session")
async def guardrails_server() -> AsyncIterator[ForgeServer]:
    """The real guardrails service with the default policy; heads trained once per checkout."""
    from services.guardrails.app import GuardrailsApp
    from services.guardrails.settings import GuardrailsSettings

    app = GuardrailsApp(load_profile("cpu", environ={}), forge_test_home(), GuardrailsSettings(device="cpu"))
    async with serving(app) as server:
        yield server
