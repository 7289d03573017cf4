"""Retrieval at scale: Search latency at 100k and 1M chunks, on Milvus Lite and on a Milvus server,
the router's store beside the bare Milvus call it makes, in the same run on the same collection.

The collection is the router store's own: `VectorStore.open` creates it (schema, index, load), and
the rows are the store's rows (chunk keys, document keys and commit rows made by its own helpers),
each document one committed version of `--chunks-per-doc` chunks, so the store's versioned read
path runs as it does in production. They are bulk-inserted in batches (random unit vectors of the
store's dimension, 384, texts of `--text-chars` characters), not embedded: 1M chunks through the
embed service would take hours on a CPU. Every chunk belongs to one tenant (its filter matches
everything: the most work for the filter and search).

Per size and backend, `--queries` random unit query vectors (after a warm-up), the two arms
interleaved query by query:
- bare: pymilvus' own `MilvusClient.search` with exactly the router's request (tenant filter,
  top_k + the store's overfetch, the same output fields, search params and Strong consistency);
- store: `VectorStore.search(tenant, collection, vector, top_k)`, as the router's Search and Chat
  call it: the same search, then the read of the hits' commit rows (versioned reads);
- bare, Bounded (server only): the bare call with Bounded consistency, which does not wait for
  the server's next time tick (what Strong costs there).
The router's share is store minus bare (p50). The full Search RPC adds the query embedding and
gRPC (bench/router_overhead.py measures those); it is not in this table.

Lite is the router's default backend (FLAT, the only sensible index there); the server runs with
the router's default index (FLAT) unless `--server-index` says otherwise, and its default time tick
(200 ms) unless `--server-tick-ms` says otherwise. The server is the test suite's Milvus 2.3.5
standalone (tests/integration/milvus_server.py, built once into .cache/).

    python bench/retrieval_scale.py [--sizes 100000,1000000] [--quick] [--backends lite,server]
        [--queries 200] [--top-k 4] [--server-index FLAT] [--server-tick-ms 200] [--max-build-s 900]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from _mesh import REPO_ROOT, install_stop_signals, percentile
from pymilvus import MilvusClient

from services.router.clients import milvus_store
from services.router.clients.milvus_store import VectorStore
from tests.integration.milvus_server import MilvusServer, ensure_server_venv, start_server

TENANT = "bench"
COLLECTION = "scale"
DIMENSION = 384  # the router's embedding_dimension (all-MiniLM-L6-v2)
# Chunk rows per insert. Lite 2.5.1's insert time grows faster than the batch (here 1,000 rows took
# 0.4 s, 5,000 took 50 s): small batches there; a server takes big ones (~8 MB of vectors).
BATCH_ROWS = {"lite": 500, "server": 5000}
TARGET_P50_MS = 5.0  # router-side (store) p50 at 100k chunks on Lite
WARMUP = 10


@dataclass
class Row:
    backend: str
    chunks: int
    build_s: float  # cumulative insert time to reach `chunks`
    bare_ms: list[float] = field(default_factory=list)
    store_ms: list[float] = field(default_factory=list)
    bounded_ms: list[float] = field(default_factory=list)
    rss_mb: float = float("nan")  # the Milvus process(es)
    hits_agree: int = 0  # queries where store and bare returned the same top_k chunks


class Collection:
    """The router store's collection, filled with documents of random unit vectors."""

    def __init__(
        self, store: VectorStore, batch_rows: int, chunks_per_doc: int, text_chars: int, seed: int
    ) -> None:
        self.store = store
        self.batch_rows = batch_rows
        self.chunks_per_doc = chunks_per_doc
        self.text = ("lorem ipsum dolor sit amet " * (text_chars // 27 + 1))[:text_chars]
        self.rng = np.random.default_rng(seed)
        self.chunks = 0
        self.build_s = 0.0
        self.name = milvus_store._milvus_name(COLLECTION)

    def _documents(self, count: int) -> Iterator[list[dict[str, Any]]]:
        """Rows of `count` more documents, in insert batches: chunk rows and commit rows as
        `replace_document` writes them (same keys, same fields)."""
        per_batch = max(1, self.batch_rows // self.chunks_per_doc)
        made = self.chunks // self.chunks_per_doc
        for start in range(made, made + count, per_batch):
            docs = range(start, min(start + per_batch, made + count))
            vectors = self.rng.standard_normal((len(docs) * self.chunks_per_doc, DIMENSION), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            as_lists = vectors.tolist()
            rows: list[dict[str, Any]] = []
            for d, doc in enumerate(docs):
                document_id = f"doc-{doc:08d}"
                doc_key = milvus_store._doc_key(TENANT, COLLECTION, document_id)
                version = self.store._next_version()
                for i in range(self.chunks_per_doc):
                    rows.append(
                        {
                            "pk": milvus_store._chunk_pk(version, TENANT, COLLECTION, document_id, i),
                            "doc_key": doc_key,
                            "tenant": TENANT,
                            "document_id": document_id,
                            "chunk_index": i,
                            "text": self.text,
                            "metadata": {"source": document_id},
                            "vector": as_lists[d * self.chunks_per_doc + i],
                        }
                    )
                rows.append(
                    self.store._commit_row(TENANT, doc_key, document_id, version, self.chunks_per_doc)
                )
            yield rows

    async def grow_to(self, chunks: int, max_build_s: float) -> bool:
        """Insert documents until the collection holds `chunks` chunks; False when the build ran
        past `max_build_s` (the collection then holds what was inserted)."""
        docs = (chunks - self.chunks) // self.chunks_per_doc
        client = self.store._client  # the store's own AsyncMilvusClient: its rows, its collection
        for rows in self._documents(docs):
            started = time.perf_counter()
            await client.insert(self.name, rows, timeout=600)
            self.build_s += time.perf_counter() - started
            self.chunks += sum(1 for r in rows if r["chunk_index"] >= 0)
            if self.build_s > max_build_s:
                return False
        return True


def bare_search(client: MilvusClient, store: VectorStore, query: list[float], top_k: int, level: str) -> Any:
    """The Milvus search the store makes for one Search (its `_search`), through pymilvus alone."""
    name = milvus_store._milvus_name(COLLECTION)
    limit = min(milvus_store.MAX_TOP_K, top_k + milvus_store._OVERFETCH)
    params = {"metric_type": milvus_store.METRIC, "params": store._collections[name].search_params(limit)}
    return client.search(
        name,
        data=[query],
        limit=limit,
        filter=f'tenant == "{TENANT}" and {milvus_store._CHUNKS}',
        output_fields=milvus_store._SEARCH_FIELDS,
        search_params=params,
        consistency_level=level,
        timeout=60,
    )


async def measure(
    row: Row, store: VectorStore, client: MilvusClient, queries: np.ndarray, top_k: int, server: bool
) -> None:
    """Both arms per query, in rotating order; the warm-up queries are not recorded."""
    for n, vector in enumerate(queries.tolist()):
        record = n >= WARMUP
        bare_hits: list[tuple[str, int]] = []
        store_hits: list[tuple[str, int]] = []
        for arm in ("bare", "store") if n % 2 else ("store", "bare"):
            started = time.perf_counter()
            if arm == "bare":
                found = bare_search(client, store, vector, top_k, "Strong")
                elapsed = time.perf_counter() - started
                ranked = sorted(found[0], key=lambda h: -h["distance"])[:top_k]
                bare_hits = [(h["entity"]["document_id"], h["entity"]["chunk_index"]) for h in ranked]
                if record:
                    row.bare_ms.append(elapsed * 1000)
            else:
                hits = await store.search(TENANT, COLLECTION, vector, top_k, timeout_s=60)
                elapsed = time.perf_counter() - started
                store_hits = [(h.document_id, h.chunk_index) for h in hits]
                if record:
                    row.store_ms.append(elapsed * 1000)
        if server:
            started = time.perf_counter()
            bare_search(client, store, vector, top_k, "Bounded")
            if record:
                row.bounded_ms.append((time.perf_counter() - started) * 1000)
        if record and bare_hits == store_hits:
            row.hits_agree += 1


def milvus_rss_mb(server: MilvusServer | None) -> float:
    """Resident memory of the Milvus process(es): the server's, or this process's Lite child."""
    if server is not None:
        processes = psutil.Process(server.wrapper.pid).children(recursive=True)
    else:
        processes = [p for p in psutil.Process().children(recursive=True) if p.name() == "milvus"]
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


async def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> list[Row]:
    server: MilvusServer | None = None
    if backend == "server":
        server = start_server(
            ensure_server_venv(),
            workdir / "server",
            extra_config=[f"proxy.timeTickInterval={args.server_tick_ms}"],
        )
        uri, index = server.uri, args.server_index
    else:
        uri, index = str(workdir / "scale.db"), "FLAT"
    rows: list[Row] = []
    # The benchmark's collection is the store's default one: created (schema, index, load) at open.
    store = await VectorStore.open(
        uri, DIMENSION, index_type=index, default_collection=COLLECTION, timeout_s=120
    )
    client = MilvusClient(uri, timeout=60)  # on Lite: the same Lite process (one per file and process)
    try:
        collection = Collection(store, BATCH_ROWS[backend], args.chunks_per_doc, args.text_chars, seed=1)
        queries = np.random.default_rng(2).standard_normal(
            (args.queries + WARMUP, DIMENSION), dtype=np.float32
        )
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for size in args.sizes:
            print(f"{backend}: building to {size:,} chunks", file=sys.stderr)
            complete = await collection.grow_to(size, args.max_build_s)
            gc.collect()
            if server is not None:
                # Seal what was inserted, so the server searches indexed segments as it would after a load.
                started = time.perf_counter()
                await store.flush(COLLECTION, timeout_s=600)
                collection.build_s += time.perf_counter() - started
            row = Row(backend, collection.chunks, collection.build_s)
            print(
                f"{backend}: {collection.chunks:,} chunks after {collection.build_s:.0f} s; measuring",
                file=sys.stderr,
            )
            await measure(row, store, client, queries, args.top_k, server is not None)
            row.rss_mb = milvus_rss_mb(server)
            rows.append(row)
            if not complete:
                print(f"{backend}: build stopped at {args.max_build_s:.0f} s", file=sys.stderr)
                break
    finally:
        client.close()
        await store.close()
        if server is not None:
            server.stop()
    return rows


def report(args: argparse.Namespace, rows: list[Row]) -> None:
    print(
        f"\n## Search latency at scale: bare Milvus call vs the router's store (top_k {args.top_k}, "
        f"{args.queries} queries, {DIMENSION}-d, {args.chunks_per_doc} chunks per document, one tenant)\n"
    )
    print(
        "| backend | chunks | build s | bare p50 ms | bare p99 ms | store p50 ms | store p99 ms | "
        "router share p50 ms | store / bare p50 | bare Bounded p50 ms | Milvus RSS MiB | same hits |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        bare50, store50 = percentile(r.bare_ms, 50), percentile(r.store_ms, 50)
        bounded = f"{percentile(r.bounded_ms, 50):.2f}" if r.bounded_ms else "n/a"
        print(
            f"| {r.backend} | {r.chunks:,} | {r.build_s:.0f} | "
            f"{bare50:.2f} | {percentile(r.bare_ms, 99):.2f} | "
            f"{store50:.2f} | {percentile(r.store_ms, 99):.2f} | {store50 - bare50:+.2f} | "
            f"{store50 / bare50:.2f} | {bounded} | {r.rss_mb:.0f} | {r.hits_agree}/{len(r.store_ms)} |"
        )
    lite = [r for r in rows if r.backend == "lite" and r.chunks >= 100_000]
    if lite:
        store50 = percentile(lite[0].store_ms, 50)
        verdict = "met" if store50 <= TARGET_P50_MS else "missed"
        print(
            f"\ntarget: store p50 <= {TARGET_P50_MS:.0f} ms at {lite[0].chunks:,} chunks on Lite: "
            f"{store50:.2f} ms ({verdict})"
        )
    print(
        f"env: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; server index {args.server_index}, time tick "
        f"{args.server_tick_ms} ms; Python {platform.python_version()}; "
        f"load avg 1 min {os.getloadavg()[0]:.2f}"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000", help="chunk counts, ascending (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="10k chunks only")
    parser.add_argument("--backends", default="lite,server")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--top-k", type=int, default=4, help="the router's default_top_k")
    parser.add_argument("--chunks-per-doc", type=int, default=10)
    parser.add_argument("--text-chars", type=int, default=512, help="characters of text per chunk")
    parser.add_argument("--server-index", default="FLAT", choices=sorted(milvus_store.INDEX_TYPES))
    parser.add_argument("--server-tick-ms", type=int, default=200, help="proxy.timeTickInterval")
    parser.add_argument("--max-build-s", type=float, default=900.0, help="insert time cap per backend")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()
    args.sizes = [10_000] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    if any(size % args.chunks_per_doc for size in args.sizes):
        parser.error("each size must be a multiple of --chunks-per-doc")
    install_stop_signals()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="forge-retrieval-scale-", dir=args.workdir) as tmp:
        for backend in args.backends.split(","):
            rows += await run_backend(backend, args, Path(tmp) / backend)
    report(args, rows)
    return 0


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(asyncio.run(main()))
