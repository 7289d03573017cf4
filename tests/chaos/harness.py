"""The chaos set-up shared by the suite and bench/chaos.py: two tenants with API keys of their
own, `forge up` on a given Milvus (a Lite file or a server URI), a first version of every
document acknowledged, and the load ready to run."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from services.common.security.keys import KeyStore
from tests.chaos.faults import Fault, RoundReport, run_round
from tests.chaos.ledger import Ledger
from tests.chaos.load import Load, make_tenants
from tests.chaos.mesh import ForgeUp
from tests.chaos.milvus import RestartableMilvus
from tests.helpers import forge_test_home

TENANTS = ("chaos-alpha", "chaos-beta")


@dataclass
class Chaos:
    mesh: ForgeUp
    load: Load
    milvus: RestartableMilvus | None = None

    async def round(self, fault: Fault) -> RoundReport:
        return await run_round(self.mesh, self.load, fault, self.milvus)


@contextlib.asynccontextmanager
async def open_chaos(
    workdir: Path, milvus_uri: str, milvus: RestartableMilvus | None = None, home: Path | None = None
) -> AsyncIterator[Chaos]:
    home = home or forge_test_home()
    # Keys before the mesh starts: a router reads new keys within 5 s, and a first call refused
    # UNAUTHENTICATED would be a finding.
    store = KeyStore(home / "keys" / "keys.yaml")
    keys = [store.create(tenant) for tenant in TENANTS]
    mesh = ForgeUp(workdir, home, env={"FORGE_ROUTER_MILVUS_URI": milvus_uri})
    try:
        await mesh.start()
        tenants = make_tenants(TENANTS, keys)
        load = Load(mesh.address("router"), tenants, Ledger(d for t in tenants for d in t.docs))
        try:
            await load.seed()
        except (TimeoutError, OSError) as e:
            raise RuntimeError(f"{e}\n{mesh.tail()}") from e
        yield Chaos(mesh, load, milvus)
    finally:
        await mesh.stop()
