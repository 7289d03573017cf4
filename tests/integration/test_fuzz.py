"""The fuzz suite's default round against the real services in this process (real models, real
gRPC; bench/fuzz.py sends 10,000 requests to the mesh run as processes): every RPC of the router
(RouterService, AdminService, OpsService, health) and of llm, embed and guardrails gets
hypothesis-drawn request messages and raw bytes (bench/fuzz.py says which). Derandomized, so a
failure here reproduces.

Checks per family: no answer is UNKNOWN, the server still answers health (SERVING) afterwards, and
the router's admission has no session left active. Findings are listed with their request bodies.
These services run without API keys or TLS (tests/helpers.serving)."""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import AsyncIterator

import grpc
import pytest

from services.common.channels import CLIENT_OPTIONS
from services.common.server import ForgeServer
from tests.helpers import REPO_ROOT, serving
from tests.integration.test_router import router_app

if str(REPO_ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
import fuzz

# Calls per RPC in this round: (hypothesis-drawn messages, raw bodies). Calls that may run a model
# get fewer; hypothesis sends fewer messages where the request type has few values (empty ones).
ROUND = (16, 12)
MODEL_ROUND = (10, 6)
MODEL_RPCS = {
    "/forge.v1.RouterService/Chat",
    "/forge.v1.RouterService/Ingest",
    "/forge.v1.RouterService/Search",
    "/forge.v1.LlmService/Generate",
    "/forge.v1.LlmService/Tokenize",
    "/forge.v1.EmbedService/Embed",
    "/forge.v1.GuardrailsService/Check",
}
# Huge strings and long lists, but within what one round on a 2-core box can afford.
STRATEGIES = fuzz.MessageStrategies(huge_chars=70_000, big_repeat=2_000, hints=fuzz.mesh_hints())


@pytest.fixture(scope="module")
async def fuzz_router(
    embed_server: ForgeServer,
    guardrails_server: ForgeServer,
    llm_server: ForgeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ForgeServer]:
    mesh = {"embed": embed_server, "guardrails": guardrails_server, "llm": llm_server}
    async with serving(router_app(mesh, tmp_path_factory.mktemp("router-fuzz"))) as server:
        yield server


SERVERS = {
    "router": "fuzz_router",
    "llm": "llm_server",
    "embed": "embed_server",
    "guardrails": "guardrails_server",
}


@pytest.fixture(params=fuzz.FAMILIES)
def target(request: pytest.FixtureRequest) -> tuple[str, ForgeServer]:
    server: ForgeServer = request.getfixturevalue(SERVERS[request.param])
    return request.param, server


def fuzz_family(channel: grpc.Channel, family: str, tally: fuzz.Tally) -> None:
    for rpc in fuzz.rpcs(family):
        messages, raw = MODEL_ROUND if rpc.path in MODEL_RPCS else ROUND
        fuzz.fuzz_rpc(
            channel,
            rpc,
            tally,
            messages=messages,
            raw=raw,
            strategies=STRATEGIES,
            metadata=fuzz.router_headers() if family == "router" else None,
            seed_metadata=(("x-forge-tenant", "fuzz"),) if family == "router" else (),
        )


def summary(family: str, tally: fuzz.Tally) -> str:
    lines = [f"{family}: {tally.requests()} requests"]
    for rpc in fuzz.rpcs(family):
        counts = tally.codes.get(rpc.key, collections.Counter())
        lines.append(f"  {rpc.path}: {dict(sorted(counts.items()))}")
    lines.extend(f"  finding: {f}" for f in tally.findings)
    return "\n".join(lines)


async def test_fuzzed_requests_get_a_status_never_unknown_and_break_nothing(
    target: tuple[str, ForgeServer],
) -> None:
    family, server = target
    tally = fuzz.Tally()
    channel = grpc.insecure_channel(server.address, options=CLIENT_OPTIONS)
    try:
        # The client blocks in a thread; this loop keeps serving the services meanwhile.
        await asyncio.to_thread(fuzz_family, channel, family, tally)
        waited = await asyncio.to_thread(fuzz.serving, channel)
        leaked = await asyncio.to_thread(fuzz.active_sessions, channel) if family == "router" else 0
    finally:
        channel.close()
    print(summary(family, tally))

    assert tally.requests() >= len(fuzz.rpcs(family)) * 2
    unknown = [str(f) for f in tally.findings if f.code == fuzz.UNKNOWN]
    assert not unknown, f"{len(unknown)} UNKNOWN answer(s):\n" + "\n".join(unknown[:10])
    assert waited is not None, f"{family} stopped answering health after the fuzzing"
    assert leaked == 0, f"{leaked} admission session(s) still active after the fuzzing"
