"""LLM serving: aggregate tokens/s and time to first token through the gRPC service vs the same
vLLM engine driven in-process, same run, same prompts, at 1, 8 and 16 concurrent streams.

Targets: served tokens/s >= 0.9 x in-process at 8 and 16 streams; TTFT overhead of the gRPC hop
<= 5 ms p50.

    python bench/llm_serving.py [--max-tokens 64] [--streams 1 8 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from forge.v1 import common_pb2, llm_pb2, llm_pb2_grpc  # noqa: E402

from services.common.channels import insecure_channel  # noqa: E402
from services.common.config import load_profile  # noqa: E402
from services.common.server import ForgeServer, ServerOptions  # noqa: E402
from services.llm.app import LlmApp  # noqa: E402
from services.llm.engine import GenerationRequest, Sampling  # noqa: E402
from services.llm.settings import LlmSettings  # noqa: E402

TOPICS = [
    "a lighthouse keeper",
    "a robot gardener",
    "the first snow",
    "a lost map",
    "an old violin",
    "a night train",
    "a tiny dragon",
    "the last bakery",
    "a quiet river",
    "a broken clock",
    "a mountain radio",
    "a paper boat",
    "a city of bridges",
    "a sleepy volcano",
    "a lucky coin",
    "a secret library",
]
FORGE_HOME = Path(os.environ.get("FORGE_HOME", "~/.forge")).expanduser()
Stream = Callable[[str], AsyncIterator[int]]  # yields cumulative completion tokens


async def measure(stream: Stream, prompts: list[str]) -> tuple[float, list[float]]:
    """Aggregate tokens/s over all prompts run concurrently, and each request's TTFT (s)."""
    ttfts: list[float] = []
    tokens = 0

    async def one(prompt: str) -> None:
        nonlocal tokens
        started = time.perf_counter()
        last = 0
        async for count in stream(prompt):
            if last == 0 and count > 0:
                ttfts.append(time.perf_counter() - started)
            last = count
        tokens += last

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    return tokens / (time.perf_counter() - started), ttfts


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    home = FORGE_HOME
    profile = load_profile("cpu", environ={})
    app = LlmApp(profile, home, LlmSettings(max_num_seqs=max(args.streams)))
    server = ForgeServer(app, profile, ServerOptions(port=0))
    await server.start()
    await server.load_and_serve()
    engine = app.core.engine
    assert engine is not None, "load_and_serve() attaches the engine"

    async def in_process(prompt: str) -> AsyncIterator[int]:
        ids = engine.tokenize_chat([("user", prompt)])
        request = GenerationRequest(
            uuid.uuid4().hex, ids, Sampling(max_tokens=args.max_tokens, temperature=0.0)
        )
        async for chunk in engine.generate(request):
            yield chunk.completion_tokens

    channel = insecure_channel(server.address)
    stub = llm_pb2_grpc.LlmServiceStub(channel)

    async def served(prompt: str) -> AsyncIterator[int]:
        request = llm_pb2.GenerateRequest(
            messages=[common_pb2.ChatMessage(role="user", content=prompt)],
            params=common_pb2.SamplingParams(max_tokens=args.max_tokens, temperature=0.0),
        )
        count = 0
        async for reply in stub.Generate(request):
            count = reply.usage.completion_tokens if reply.HasField("usage") else count + 1
            yield count

    async def best_of(stream: Stream, prompts: list[str]) -> tuple[float, float]:
        runs = [await measure(stream, prompts) for _ in range(args.rounds)]
        rate = statistics.median(r for r, _ in runs)
        ttft = statistics.median(t for _, ts in runs for t in ts)
        return rate, ttft * 1000

    rows = []
    try:
        await measure(in_process, [f"Write a short story about {TOPICS[0]}."])  # warm-up
        for n in args.streams:
            prompts = [f"Write a short story about {TOPICS[i % len(TOPICS)]}." for i in range(n)]
            direct: Awaitable[tuple[float, float]] = best_of(in_process, prompts)
            direct_rate, direct_ttft = await direct
            grpc_rate, grpc_ttft = await best_of(served, prompts)
            rows.append((n, direct_rate, grpc_rate, direct_ttft, grpc_ttft))
    finally:
        await channel.close()
        await server.stop()

    print(
        f"\nLLM serving: SmolLM2-135M on vLLM (CPU), greedy, max_tokens {args.max_tokens}, "
        f"median of {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    print(
        f"{'streams':>8}{'in-proc tok/s':>15}{'gRPC tok/s':>12}{'ratio':>7}"
        f"{'in-proc TTFT ms':>17}{'gRPC TTFT ms':>14}{'overhead ms':>13}"
    )
    for n, dr, gr, dt, gt in rows:
        print(f"{n:>8}{dr:>15.1f}{gr:>12.1f}{gr / dr:>7.2f}{dt:>17.1f}{gt:>14.1f}{gt - dt:>13.1f}")
    print("targets: ratio >= 0.90 at 8 and 16 streams; TTFT overhead <= 5 ms p50")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
