"""The chaos suite's mesh: `forge up` (the real supervisor) with the load's tenants, started once
per backend per module: on its default Milvus Lite (a file of its own), or on the real Milvus
server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.chaos.harness import Chaos, open_chaos
from tests.chaos.milvus import RestartableMilvus
from tests.integration.milvus_server import ServerVenvUnavailable


@pytest.fixture(scope="module")
async def lite_chaos(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chaos]:
    workdir = tmp_path_factory.mktemp("chaos-lite")
    async with open_chaos(workdir, milvus_uri=str(workdir / "chaos.db")) as chaos:
        yield chaos


@pytest.fixture(scope="module")
async def server_chaos(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Chaos]:
    workdir = tmp_path_factory.mktemp("chaos-milvus-server")
    milvus = RestartableMilvus(workdir / "milvus")
    try:
        await asyncio.to_thread(milvus.start)
    except ServerVenvUnavailable as e:
        pytest.skip(f"no Milvus server to fault: {e}")
    try:
        async with open_chaos(workdir, milvus_uri=milvus.uri, milvus=milvus) as chaos:
            yield chaos
    finally:
        milvus.stop()
