"""The router's vector store: tenant-scoped document chunks in Milvus, through pymilvus' async client.

A Forge collection `<name>` is the Milvus collection `forge_<name>`, shared by all tenants; every row
carries its tenant and every read or delete filters on it server-side. The URI picks the backend: a
local path ending `.db` is a Milvus Lite file (one process per file), anything else a Milvus server.

Whole versions (issue 13). A document is always entirely one version, whatever is killed when:
- Every write of a document is a new *version* (a 60-bit number: the write's start time in
  microseconds, shifted, plus random bits; increasing within a process). Its chunk rows are
  INSERTED under fresh primary keys `v<version hex><hash>`; nothing live is overwritten.
- A *commit row* (same collection, `chunk_index == -1`, pk `m<hash(doc_key, version)>`) names a
  version and its chunk count; a document's committed version is the highest its commit rows
  name. Inserting that one row is the commit point (inserted, not upserted: Lite's upsert is a
  delete then an insert, which a reader in between would see as no commit at all). After it, the
  replaced version's rows and commit row go in one delete. Deleting a document deletes its commit
  rows first, then its chunk rows.
- Readers see only committed versions: search drops every hit whose row version is not its
  document's committed version (read after the search) and searches again, wider, when that left
  fewer than `top_k`, or when a hit was *older* than the committed version (a commit landed while
  it searched: the new rows exist already, so the next round finds them; at most 4 rounds, the
  last one's answer stands). Counts come from the commit rows. A half-written new version, or an
  old one whose delete was cut short, is never returned; it is garbage, removed by the document's
  next write, its deletion, or a sweep.
Why this holds: one version's rows are one insert, visible all at once, before its commit; they
are deleted only after a later commit. A search that reads a document's commit rows after it
searched keeps the committed version's hits only if the search saw them, and then it saw all of
them: a document is in an answer whole or not at all. "Not at all" happens only when commits of
that document land during every round of one search (a reader racing back-to-back re-ingests of
the document it is looking for).

Kills. Killed before the commit: the old version is still the committed one (the new rows are
invisible leftovers). Killed after it: the new version is whole; old rows are invisible leftovers.
A Lite file is open in one process only, so a store on Lite is its only writer: each write removes
every leftover of its document, and attaching a collection (at open, or first use) sweeps the
leftovers of all documents. On a server, other routers may be writing the same document at once;
a write there removes only what it replaced and leftovers older than `writer_grace_s` (a write
that took longer than half of that is refused before its commit), so it never deletes another
writer's rows in flight; `writer_grace_s=0` declares the store the server's only writer (it then
behaves as on Lite). Two routers writing one document at once: the higher version wins, and a
write that finds a committed version above its own (it waited for its process's lock on the
document while another router committed) takes a version above that one before it replaces it.

Legacy collections (written before versions, rows keyed by hash(tenant, collection, document_id,
chunk_index)) need no schema change: opening one builds the commit rows once (version 0 = the
legacy keys, with the document's row count) and then writes a layout marker row
(`chunk_index == -2`); a crash mid-way redoes it. A legacy document's next write replaces it
with a versioned one. Legacy data that was already a mix (a kill between the old upsert and tail
delete) cannot be told apart and stays as it was.

Durability: an acknowledged write survives a SIGKILL of the router, of the Lite process and of a
Milvus server, without a flush (tests/integration/test_whole_versions.py kills each): a server
(2.3.5 standalone, tested) logs every insert and delete to its message log before it answers and
replays it at restart; a Lite file is SQLite, every change committed before Lite answers. (A
router killed with SIGKILL leaves its Lite process running for about 2 s: it stops by itself
once the file's lock is free.) Tested against process kills, not power loss.

Rows also carry `doc_key`, a hash of (tenant, collection, document_id): deletes and lookups filter
on that hex string, never on the raw document id, because Milvus Lite 2.5.1's expression parser
cannot match a string with a newline or carriage return in it, whatever the escaping. Lite 2.5.1
also turns a rejected upsert into a delete and does not enforce VARCHAR lengths, so every row is
validated here, before it is written, against the limits a server would enforce; chunk and commit
rows are inserted, never upserted (only the migration's own rows are upserted, idempotently).

Implements the `VectorIndex` port. Every public call is bounded by the `timeout_s` the use case
carved from the caller's deadline (the store's own default only when none is given), shared by the
Milvus calls it makes. Bad input raises `InvalidArgument`, a Milvus failure `IndexUnavailable`, a
call that ran out of time `IndexTimeout`; the server kit maps those to status codes, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlparse

import grpc
from pymilvus import AsyncMilvusClient, DataType, MilvusException
from pymilvus import exceptions as milvus_errors

from services.common.errors import InvalidArgument
from services.router import validation
from services.router.ports import ChunkRecord, ContextChunk, IndexTimeout, IndexUnavailable

T = TypeVar("T")

COLLECTION_PREFIX: Final = "forge_"
INDEX_TYPES: Final = frozenset({"FLAT", "IVF_FLAT", "HNSW", "AUTOINDEX"})
LITE_INDEX_TYPES: Final = frozenset({"FLAT", "IVF_FLAT", "AUTOINDEX"})
METRIC: Final = "COSINE"

# Field limits, in UTF-8 bytes (the unit a server checks VARCHAR max_length in; Lite checks nothing).
MAX_TENANT_BYTES: Final = 128
MAX_DOCUMENT_ID_BYTES: Final = validation.MAX_DOCUMENT_ID_BYTES
MAX_TEXT_BYTES: Final = 65535
MAX_METADATA_BYTES: Final = 65536  # Milvus' default cap on one JSON value
MAX_TOP_K: Final = 16384  # Milvus' limit on topk
MAX_DIMENSION: Final = 32768
_KEY_LEN: Final = 40  # sha1 hex
_IDS_PER_EXPRESSION: Final = 512  # keeps `doc_key in [...]` expressions small
# Added to a call's own timeout: pymilvus enforces the timeout; this only bounds a call that ignores it.
_BACKSTOP_S: Final = 5.0

_INDEX_BUILD_PARAMS: Final[dict[str, dict[str, int]]] = {
    "FLAT": {},
    "IVF_FLAT": {"nlist": 128},
    "HNSW": {"M": 16, "efConstruction": 200},
    "AUTOINDEX": {},
}
_OUTPUT_FIELDS: Final = ["document_id", "chunk_index", "text", "metadata"]
_SEARCH_FIELDS: Final = ["doc_key", *_OUTPUT_FIELDS]
_REQUIRED_FIELDS: Final = frozenset({"pk", "doc_key", "tenant", "chunk_index", "vector", *_OUTPUT_FIELDS})

# Raised by pymilvus for a malformed request built here (a bug in this module), not for a Milvus failure.
_PROGRAMMING_ERRORS: Final = (
    milvus_errors.ParamError,
    milvus_errors.DataTypeNotMatchException,
    milvus_errors.DataTypeNotSupportException,
    milvus_errors.DataNotMatchException,
    milvus_errors.PrimaryKeyException,
    milvus_errors.FieldsTypeException,
    milvus_errors.FieldTypeException,
    milvus_errors.InvalidConsistencyLevel,
)
_COLLECTION_NOT_FOUND: Final = 100  # Milvus error code

# Row kinds, by chunk_index: chunks are 0..n-1; a document's commit row and a collection's layout
# marker are below 0 (every read of chunks filters `chunk_index >= 0`).
_COMMIT_INDEX: Final = -1
_LAYOUT_INDEX: Final = -2
_LAYOUT_PK: Final = "layout:versioned"  # not hex, not v..., not m...: no chunk or commit row has it
_CHUNKS: Final = "chunk_index >= 0"
_VERSION_HEX: Final = 15  # 60 bits: the write's start in microseconds << 8, plus 8 random bits
_VERSION_SHIFT: Final = 8
LEGACY_VERSION: Final = 0  # rows keyed the pre-version way: their pks are 40 hex digits, all < "v"
_PAGE: Final = 4096  # rows per query when scanning (Milvus caps offset + limit at 16384)
_SEARCH_ROUNDS: Final = 4  # at most this many searches per Search; the last one's answer stands
_OVERFETCH: Final = 16  # extra hits asked for, so rows of other versions rarely cost a round
# A server store deletes another writer's rows only when their version is older than this (the
# writes of other routers in flight are younger: a write older than half of it is not committed).
DEFAULT_WRITER_GRACE_S: Final = 3600.0

log = logging.getLogger(__name__)


class MilvusUnavailable(IndexUnavailable):
    """A Milvus call failed; `milvus_code` is Milvus' own error code where it gave one."""

    def __init__(self, message: str, milvus_code: int | None = None) -> None:
        super().__init__(message)
        self.milvus_code = milvus_code


class _TimeBudget:
    """One public call's time, shared by the Milvus calls it makes."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._expires_at = time.monotonic() + timeout_s

    def left(self, what: str) -> float:
        left = self._expires_at - time.monotonic()
        if left <= 0:
            raise IndexTimeout(f"{what}: no time left of the {self.timeout_s:.2f}s given")
        return left


class StoreSchemaMismatch(ValueError):
    """An existing Milvus collection does not have the schema this store needs (e.g. another dimension)."""


@dataclass
class _KeyLock:
    lock: asyncio.Lock
    users: int = 0


@dataclass(frozen=True)
class _Collection:
    index_type: str  # the index the collection actually has, whatever this store would create

    def search_params(self, top_k: int) -> dict[str, int]:
        if self.index_type == "HNSW":
            return {"ef": max(64, top_k)}  # HNSW needs ef >= top_k
        if self.index_type.startswith("IVF"):
            return {"nprobe": 16}
        return {}


# Milvus Lite servers this module opened, by resolved path, with how many open stores use each:
# pymilvus starts one Lite process per file and never stops it; the last store to close stops it.
_lite_users: dict[str, int] = {}


@dataclass(frozen=True)
class Commit:
    """A document's committed version (the highest among its commit rows) and its chunk count,
    with every commit row found (older ones are garbage once a newer one exists)."""

    doc_key: str
    version: int
    chunks: int
    rows: tuple[str, ...] = ()  # pks of all its commit rows
    versions: tuple[int, ...] = ()  # the versions they name


# Called by the store at each step of a write (see `VectorStore.pause_at`); tests stop there.
StepHook = Callable[[str], Awaitable[None]]


class VectorStore:
    """Chunks of tenants' documents in Milvus. Create with `await VectorStore.open(...)`."""

    def __init__(
        self,
        client: AsyncMilvusClient,
        *,
        target: str,
        lite_path: str | None,
        dimension: int,
        index_type: str,
        default_collection: str,
        timeout_s: float,
        writer_grace_s: float,
    ) -> None:
        self._client = client
        self._target = target  # for messages: never the URI itself (it may carry credentials)
        self._lite_path = lite_path
        self.dimension = dimension
        self.index_type = index_type
        self.default_collection = default_collection
        self._timeout_s = timeout_s
        # None: this store is the only writer (a Lite file is open in one process only).
        only_writer = lite_path is not None or writer_grace_s == 0
        self._writer_grace_s: float | None = None if only_writer else writer_grace_s
        self._collections: dict[str, _Collection] = {}  # Milvus name -> known to exist, loaded, checked
        self._schema_lock = asyncio.Lock()
        self._doc_locks: dict[tuple[str, str, str], _KeyLock] = {}
        self._last_version = 0
        self._closed = False
        # Test seam: awaited at each named step of a write or delete (never set in production).
        self.pause_at: StepHook | None = None

    @property
    def is_lite(self) -> bool:
        return self._lite_path is not None

    @classmethod
    async def open(
        cls,
        uri: str,
        dimension: int,
        *,
        token: str = "",
        index_type: str = "FLAT",
        default_collection: str = "default",
        timeout_s: float = 30.0,
        writer_grace_s: float = DEFAULT_WRITER_GRACE_S,
    ) -> VectorStore:
        """Open the store; on a Lite file, also sweep the leftovers of writes cut short.
        `writer_grace_s` (servers only): see the module docstring; 0 declares this store the
        server's only writer, which then removes every leftover at once."""
        if not 1 <= dimension <= MAX_DIMENSION:
            raise ValueError(f"dimension must be in 1..{MAX_DIMENSION}, got {dimension}")
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {sorted(INDEX_TYPES)}, got {index_type!r}")
        if writer_grace_s < 0:
            raise ValueError(f"writer_grace_s must be >= 0, got {writer_grace_s}")
        validation.collection(default_collection)
        lite_path = _lite_path(uri)
        if lite_path is not None:
            if index_type not in LITE_INDEX_TYPES:
                raise ValueError(
                    f"Milvus Lite supports index types {sorted(LITE_INDEX_TYPES)}, not {index_type}"
                )
            path = Path(lite_path)
            # Lite's own rules for the file name; checked here for a clear message.
            if not re.fullmatch(r"[A-Za-z0-9.\-_]{1,36}", path.name):
                raise ValueError(f"Milvus Lite file name must match [A-Za-z0-9._-]{{1,36}}: {path.name!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            target = f"Milvus Lite {lite_path}"
            client_uri = lite_path
        else:
            parsed = urlparse(uri)
            target = f"Milvus at {parsed.hostname}:{parsed.port}" if parsed.hostname else "Milvus"
            client_uri = uri
        try:
            # For a Lite file this starts the Lite process and waits for it (blocking): off the loop.
            client = await asyncio.to_thread(AsyncMilvusClient, client_uri, token=token, timeout=timeout_s)
        except MilvusException as e:
            hint = " (a Lite file can be open in one process only)" if lite_path else ""
            raise MilvusUnavailable(f"cannot open {target}: {e.message}{hint}", e.code) from e
        if lite_path is not None:
            _lite_users[lite_path] = _lite_users.get(lite_path, 0) + 1
        store = cls(
            client,
            target=target,
            lite_path=lite_path,
            dimension=dimension,
            index_type=index_type,
            default_collection=default_collection,
            timeout_s=timeout_s,
            writer_grace_s=writer_grace_s,
        )
        try:
            await store._ensure(_milvus_name(default_collection), store._budget(None), create=True)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(MilvusException, grpc.RpcError, OSError):
            await self._client.close()
        if self._lite_path is not None:
            users = _lite_users.get(self._lite_path, 1) - 1
            if users > 0:
                _lite_users[self._lite_path] = users
            else:
                _lite_users.pop(self._lite_path, None)
                # Stops the Lite process and frees the file for another process (waits for exit).
                manager = importlib.import_module("milvus_lite.server_manager").server_manager_instance
                await asyncio.to_thread(manager.release_server, self._lite_path)

    def _budget(self, timeout_s: float | None) -> _TimeBudget:
        return _TimeBudget(self._timeout_s if timeout_s is None else timeout_s)

    # --- writes -------------------------------------------------------------------------------

    async def replace_document(
        self,
        tenant: str,
        collection: str,
        document_id: str,
        chunks: Sequence[ChunkRecord],
        timeout_s: float | None = None,
    ) -> int:
        """Store `chunks` as the whole of the document, replacing any earlier version. Returns the
        number stored. An empty `chunks` deletes the document. Readers see the old version whole
        until the commit, the new one whole after it; a failure or kill at any point leaves one of
        the two."""
        validation.tenant(tenant)
        name = _milvus_name(collection)
        version = self._next_version()
        rows = self._rows(tenant, collection, document_id, chunks, version)
        if not rows:
            await self.delete_documents(tenant, collection, [document_id], timeout_s)
            return 0
        doc_key = _doc_key(tenant, collection, document_id)
        budget = self._budget(timeout_s)
        async with self._document_locks(tenant, name, [document_id]):
            await self._ensure(name, budget, create=True)
            previous = (await self._commits(name, tenant, [doc_key], budget)).get(doc_key)
            if previous is not None and previous.version >= version:
                # Another router committed a later version while this write waited for the lock:
                # this write replaces it, so it takes a version above it (else it would delete a
                # higher version and leave a lower one: the higher version must win).
                version = self._next_version(after=previous.version)
                rows = self._rows(tenant, collection, document_id, chunks, version)
            await self._step("before-insert")
            # Fresh keys: whatever happens from here to the commit, the committed version is untouched.
            await self._call(
                f"insert into {name}", lambda t: self._client.insert(name, rows, timeout=t), budget
            )
            await self._step("inserted")
            self._check_young(version, f"write of {document_id!r}")
            commit = self._commit_row(tenant, doc_key, document_id, version, len(rows))
            # The commit point: one new row (inserted: Lite's upsert is a delete, then an insert,
            # which a reader in between would see as no commit at all). Readers take the highest
            # version among a document's commit rows.
            await self._call(
                f"commit in {name}", lambda t: self._client.insert(name, [commit], timeout=t), budget
            )
            await self._step("committed")
            await self._collect(name, tenant, {doc_key: previous}, version, budget)
            await self._step("collected")
        return len(rows)

    async def delete_documents(
        self, tenant: str, collection: str, document_ids: Sequence[str], timeout_s: float | None = None
    ) -> tuple[int, int]:
        """Delete these documents of the tenant. Returns (documents that existed, chunks deleted)."""
        validation.tenant(tenant)
        name = _milvus_name(collection)
        ids = sorted(set(document_ids))
        for i, document_id in enumerate(ids):
            validation.stored_document_id(document_id, f"document_ids[{i}]")
        budget = self._budget(timeout_s)
        if not ids or not await self._ensure(name, budget, create=False):
            return 0, 0
        documents = chunks = 0
        async with self._document_locks(tenant, name, ids):
            for start in range(0, len(ids), _IDS_PER_EXPRESSION):
                keys = [_doc_key(tenant, collection, d) for d in ids[start : start + _IDS_PER_EXPRESSION]]
                commits = await self._commits(name, tenant, keys, budget)
                if commits:
                    # The documents vanish at once, with their commit rows; their chunks are garbage.
                    pks = _pk_in([pk for c in commits.values() for pk in c.rows])
                    await self._delete(name, f"{_eq('tenant', tenant)} and {pks}", budget)
                    await self._step("uncommitted")
                previous: dict[str, Commit | None] = {k: commits.get(k) for k in keys}
                await self._collect(name, tenant, previous, None, budget)
                documents += len(commits)
                chunks += sum(c.chunks for c in commits.values())
        return documents, chunks

    async def flush(self, collection: str, timeout_s: float | None = None) -> None:
        """Seal the collection's recent writes into segments. Not needed for durability (see the
        module docstring) and rate-limited by servers (0.1/s per collection by default from
        Milvus 2.3.9): for operators and tests, not for every write."""
        name = _milvus_name(collection)
        budget = self._budget(timeout_s)
        if await self._ensure(name, budget, create=False):
            await self._call(f"flush {name}", lambda t: self._client.flush(name, timeout=t), budget)

    async def sweep(self, collection: str, timeout_s: float | None = None) -> int:
        """Delete the collection's garbage chunk rows (versions no commit row names), of every
        tenant; on a server with other writers only those older than `writer_grace_s`. Returns how
        many. Opening a Lite file does this for each collection it attaches."""
        name = _milvus_name(collection)
        budget = self._budget(timeout_s)
        if not await self._ensure(name, budget, create=False):
            return 0
        return await self._sweep(name, budget)

    # --- reads --------------------------------------------------------------------------------

    async def search(
        self,
        tenant: str,
        collection: str,
        vector: Sequence[float],
        top_k: int,
        timeout_s: float | None = None,
    ) -> list[ContextChunk]:
        """The tenant's `top_k` chunks closest to `vector`, most similar first, of committed versions
        only. An unknown collection holds nothing: []."""
        validation.tenant(tenant)
        name = _milvus_name(collection)
        query = _vector(vector, self.dimension, "vector")
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be in 1..{MAX_TOP_K}, got {top_k}")
        budget = self._budget(timeout_s)
        budget.left(f"search {name}")
        if not await self._ensure(name, budget, create=False):
            return []
        limit = min(MAX_TOP_K, top_k + _OVERFETCH)
        kept: list[dict[str, Any]] = []
        for _ in range(_SEARCH_ROUNDS):
            try:
                hits = await self._search(name, tenant, query, limit, budget)
            except MilvusUnavailable as e:
                if e.milvus_code == _COLLECTION_NOT_FOUND:  # dropped behind our back
                    self._collections.pop(name, None)
                    return []
                raise
            commits = await self._commits(name, tenant, {h["entity"]["doc_key"] for h in hits}, budget)
            kept, superseded = _committed_hits(hits, commits)
            more = len(kept) < top_k and len(hits) == limit < MAX_TOP_K
            if not superseded and not more:
                break
            if more:
                limit = min(MAX_TOP_K, 2 * limit)
        chunks = [
            ContextChunk(
                document_id=str(hit["entity"]["document_id"]),
                chunk_index=int(hit["entity"]["chunk_index"]),
                score=float(hit["distance"]),
                text=str(hit["entity"]["text"]),
                metadata={str(k): str(v) for k, v in (hit["entity"].get("metadata") or {}).items()},
            )
            for hit in kept
        ]
        chunks.sort(key=lambda h: h.score, reverse=True)
        return chunks[:top_k]

    async def list_collections(self, tenant: str, timeout_s: float | None = None) -> list[tuple[str, int]]:
        """Forge collections holding chunks of this tenant, with the chunk counts (of committed
        versions), by name. The default collection is always listed; others only where the tenant
        has chunks (names are not shared across tenants)."""
        validation.tenant(tenant)
        budget = self._budget(timeout_s)
        names = await self._call(
            "list collections", lambda t: self._client.list_collections(timeout=t), budget
        )
        forge = sorted(
            n[len(COLLECTION_PREFIX) :]
            for n in names
            if n.startswith(COLLECTION_PREFIX)
            and validation.COLLECTION_PATTERN.fullmatch(n[len(COLLECTION_PREFIX) :])
        )

        async def count(collection: str) -> int:
            name = _milvus_name(collection)
            if not await self._ensure(name, budget, create=False):
                return 0
            where = f"{_eq('tenant', tenant)} and chunk_index == {_COMMIT_INDEX}"
            rows = await self._scan(name, where, ["doc_key", "metadata"], budget)
            return sum(c.chunks for c in _latest_commits(rows).values())

        counts = await asyncio.gather(*(count(c) for c in forge))
        return [(c, n) for c, n in zip(forge, counts, strict=True) if n > 0 or c == self.default_collection]

    # --- internals ----------------------------------------------------------------------------

    def _next_version(self, after: int = 0) -> int:
        """A fresh version: later than any this process made and than `after`, and ordered by
        start time across processes (up to their clocks' skew)."""
        now = time.time_ns() // 1000 << _VERSION_SHIFT | secrets.randbits(_VERSION_SHIFT)
        self._last_version = max(now, self._last_version + 1, after + 1)
        return self._last_version

    def _grace_cutoff(self) -> int | None:
        """Versions below this are nobody's write in flight; None: every version is (one writer)."""
        if self._writer_grace_s is None:
            return None
        started = time.time_ns() // 1000 - int(self._writer_grace_s * 1e6)
        return max(0, started) << _VERSION_SHIFT

    def _check_young(self, version: int, what: str) -> None:
        """Refuse to commit a write older than half the grace: others may treat it as garbage."""
        if self._writer_grace_s is None:
            return
        age_s = (time.time_ns() // 1000 - (version >> _VERSION_SHIFT)) / 1e6
        if age_s > self._writer_grace_s / 2:
            raise IndexTimeout(f"{what} took {age_s:.0f}s, over half of writer_grace_s; not committed")

    async def _step(self, step: str) -> None:
        if self.pause_at is not None:
            await self.pause_at(step)

    async def _search(
        self, name: str, tenant: str, query: list[float], limit: int, budget: _TimeBudget
    ) -> list[dict[str, Any]]:
        params = {"metric_type": METRIC, "params": self._collections[name].search_params(limit)}
        result = await self._call(
            f"search {name}",
            lambda t: self._client.search(
                name,
                data=[query],
                limit=limit,
                filter=f"{_eq('tenant', tenant)} and {_CHUNKS}",
                output_fields=_SEARCH_FIELDS,
                search_params=params,
                # A document ingested just before must be found.
                consistency_level="Strong",
                timeout=t,
            ),
            budget,
        )
        return list(result[0])

    async def _commits(
        self, name: str, tenant: str, doc_keys: Iterable[str], budget: _TimeBudget
    ) -> dict[str, Commit]:
        """The committed versions of these documents (absent: none)."""
        keys = sorted(set(doc_keys))
        rows: list[dict[str, Any]] = []
        for start in range(0, len(keys), _IDS_PER_EXPRESSION):
            listed = ", ".join(_quote(k) for k in keys[start : start + _IDS_PER_EXPRESSION])
            where = f"{_eq('tenant', tenant)} and chunk_index == {_COMMIT_INDEX} and doc_key in [{listed}]"
            rows += await self._query(name, where, ["pk", "doc_key", "metadata"], budget)
        return _latest_commits(rows)

    async def _collect(
        self,
        name: str,
        tenant: str,
        previous: dict[str, Commit | None],
        committed: int | None,
        budget: _TimeBudget,
    ) -> None:
        """After a commit of `committed` (None: after deleting the commit rows), delete these
        documents' rows that are garbage now: the versions and commit rows the commit replaced
        and, where this store is the only writer, every other version; else the versions older
        than the grace. Cut short, it leaves only rows no reader sees."""
        chunks = _CHUNKS if committed is None else f"{_CHUNKS} and {_outside_version(committed)}"
        commit_rows = f"chunk_index == {_COMMIT_INDEX}"
        if committed is not None:
            commit_rows += f" and pk not in [{', '.join(_quote(_commit_pk(k, committed)) for k in previous)}]"
        cutoff = self._grace_cutoff()
        if cutoff is not None:
            olds = [c for c in previous.values() if c is not None]
            ranges = [_version_range(v) for c in olds for v in c.versions]
            if committed is not None:
                cutoff = min(cutoff, committed)
            chunks += " and (" + " or ".join([f"pk < {_quote(_version_pk(cutoff))}", *ranges]) + ")"
            commit_rows = _pk_in([pk for c in olds for pk in c.rows])
        keys = ", ".join(_quote(k) for k in sorted(previous))
        where = f"{_eq('tenant', tenant)} and doc_key in [{keys}] and (({chunks}) or ({commit_rows}))"
        try:
            await self._delete(name, where, budget)
        except (IndexUnavailable, IndexTimeout) as e:
            # The commit stands: what is left is garbage no reader sees, removed by the next write.
            log.warning("garbage rows left in %s: %s", name, e)

    async def _sweep(self, name: str, budget: _TimeBudget) -> int:
        commit_rows = await self._scan(
            name, f"chunk_index == {_COMMIT_INDEX}", ["doc_key", "metadata"], budget
        )
        latest = _latest_commits(commit_rows)
        commits = {k: c.version for k, c in latest.items()}
        # Commit rows below a document's latest are garbage whoever wrote them: never read again.
        stale = [
            str(r["pk"])
            for r in commit_rows
            if str(r["pk"]) != _commit_pk(str(r["doc_key"]), commits[str(r["doc_key"])])
        ]
        cutoff = self._grace_cutoff()
        where = _CHUNKS if cutoff is None else f"{_CHUNKS} and pk < {_quote(_version_pk(cutoff))}"
        garbage = stale + [
            str(row["pk"])
            for row in await self._scan(name, where, ["doc_key"], budget)
            if commits.get(str(row["doc_key"])) != _row_version(str(row["pk"]))
        ]
        for start in range(0, len(garbage), _IDS_PER_EXPRESSION):
            pks = ", ".join(_quote(p) for p in garbage[start : start + _IDS_PER_EXPRESSION])
            await self._delete(name, f"pk in [{pks}]", budget)
        if garbage:
            log.info("swept %d garbage rows from %s", len(garbage), name)
        return len(garbage)

    async def _scan(
        self, name: str, where: str, fields: list[str], budget: _TimeBudget
    ) -> list[dict[str, Any]]:
        """Every row matching `where`, a page at a time in primary-key order."""
        rows: list[dict[str, Any]] = []
        last = ""
        while True:
            after = f" and pk > {_quote(last)}" if last else ""
            page = await self._query(name, f"({where}){after}", ["pk", *fields], budget, limit=_PAGE)
            rows += page
            if len(page) < _PAGE:
                return rows
            last = max(str(row["pk"]) for row in page)

    async def _migrate(self, name: str, budget: _TimeBudget) -> None:
        """Give a collection written before versions its commit rows (one per document: version 0,
        its row count), then the layout marker. Idempotent: a crash mid-way redoes it."""
        marker = await self._query(name, f"pk == {_quote(_LAYOUT_PK)}", ["pk"], budget)
        if marker:
            return
        documents: dict[str, dict[str, Any]] = {}
        rows = await self._scan(name, _CHUNKS, ["doc_key", "tenant", "document_id"], budget)
        for row in rows:
            entry = documents.setdefault(str(row["doc_key"]), {**row, "chunks": 0})
            entry["chunks"] += 1
        commits = [
            self._commit_row(str(d["tenant"]), k, str(d["document_id"]), LEGACY_VERSION, int(d["chunks"]))
            for k, d in sorted(documents.items())
        ]
        for start in range(0, len(commits), _PAGE):
            await self._upsert(name, commits[start : start + _PAGE], budget)
        layout = {
            **self._commit_row("", "", "", LEGACY_VERSION, 0),
            "pk": _LAYOUT_PK,
            "chunk_index": _LAYOUT_INDEX,
        }
        await self._upsert(name, [layout], budget)
        if documents:
            log.info("%s: %d documents written before versions now have commit rows", name, len(documents))

    def _commit_row(
        self, tenant: str, doc_key: str, document_id: str, version: int, chunks: int
    ) -> dict[str, Any]:
        return {
            "pk": _commit_pk(doc_key, version),
            "doc_key": doc_key,
            "tenant": tenant,
            "document_id": document_id,
            "chunk_index": _COMMIT_INDEX,
            "text": "",
            "metadata": {"version": f"{version:x}", "chunks": chunks},
            # Never searched (filtered out); cosine needs some nonzero vector.
            "vector": [1.0] + [0.0] * (self.dimension - 1),
        }

    async def _query(
        self, name: str, where: str, fields: list[str], budget: _TimeBudget, limit: int | None = None
    ) -> list[dict[str, Any]]:
        # Strong: a read must see every write acknowledged before it.
        extra = {} if limit is None else {"limit": limit}
        rows = await self._call(
            f"query {name}",
            lambda t: self._client.query(
                name, filter=where, output_fields=fields, consistency_level="Strong", timeout=t, **extra
            ),
            budget,
        )
        return list(rows)

    async def _delete(self, name: str, where: str, budget: _TimeBudget) -> None:
        await self._call(
            f"delete from {name}", lambda t: self._client.delete(name, filter=where, timeout=t), budget
        )

    async def _upsert(self, name: str, rows: list[dict[str, Any]], budget: _TimeBudget) -> None:
        await self._call(f"upsert into {name}", lambda t: self._client.upsert(name, rows, timeout=t), budget)

    async def _ensure(self, name: str, budget: _TimeBudget, *, create: bool) -> bool:
        """True when the Milvus collection exists (created if `create`), is loaded and has our schema."""
        if name in self._collections:
            return True
        if not create and not await self._exists(name, budget):
            return False  # not remembered: another process may create it later
        async with self._schema_lock:  # one creator per collection; later callers find it ready
            if name in self._collections:
                return True
            if not await self._exists(name, budget):
                try:
                    await self._create(name, budget)
                except IndexUnavailable:
                    if not await self._exists(name, budget):  # else another process created it meanwhile
                        raise
            self._collections[name] = await self._attach(name, budget)
            return True

    async def _exists(self, name: str, budget: _TimeBudget) -> bool:
        return bool(
            await self._call(f"check {name}", lambda t: self._client.has_collection(name, timeout=t), budget)
        )

    async def _create(self, name: str, budget: _TimeBudget) -> None:
        schema = AsyncMilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=_KEY_LEN)
        schema.add_field("doc_key", DataType.VARCHAR, max_length=_KEY_LEN)
        # Not a partition key: Lite 2.5.1 then rejects `tenant == "..."` filters, and Milvus 2.3.5
        # routes upserted rows to a partition its tenant filter does not search.
        schema.add_field("tenant", DataType.VARCHAR, max_length=MAX_TENANT_BYTES)
        schema.add_field("document_id", DataType.VARCHAR, max_length=MAX_DOCUMENT_ID_BYTES)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_BYTES)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        index = AsyncMilvusClient.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type=self.index_type,
            metric_type=METRIC,
            params=_INDEX_BUILD_PARAMS[self.index_type],
        )
        await self._call(
            f"create {name}",
            lambda t: self._client.create_collection(
                name, schema=schema, index_params=index, consistency_level="Strong", timeout=t
            ),
            budget,
        )

    async def _attach(self, name: str, budget: _TimeBudget) -> _Collection:
        """Check an existing collection's schema and index, and load it (a server loads nothing by
        itself after a restart)."""
        info = await self._call(
            f"describe {name}", lambda t: self._client.describe_collection(name, timeout=t), budget
        )
        fields = {f["name"]: f for f in info["fields"]}
        missing = _REQUIRED_FIELDS - fields.keys()
        if missing:
            raise StoreSchemaMismatch(
                f"{self._target}: collection {name} lacks fields {sorted(missing)}: not a Forge collection"
            )
        vector = fields["vector"]
        dim = int(vector.get("params", {}).get("dim", -1))
        if vector["type"] != DataType.FLOAT_VECTOR or dim != self.dimension:
            raise StoreSchemaMismatch(
                f"{self._target}: collection {name} holds {dim}-dimensional vectors but the embedding "
                f"model makes {self.dimension}-dimensional ones; use another Milvus URI or collection, "
                f"or drop {name} and re-ingest"
            )
        names = await self._call(
            f"list indexes of {name}",
            lambda t: self._client.list_indexes(name, field_name="vector", timeout=t),
            budget,
        )
        if not names:
            raise StoreSchemaMismatch(f"{self._target}: collection {name} has no index on its vector field")
        index = await self._call(
            f"describe index of {name}",
            lambda t: self._client.describe_index(name, index_name=names[0], timeout=t),
            budget,
        )
        metric = str(index.get("metric_type", "")).upper()
        if metric != METRIC:
            raise StoreSchemaMismatch(f"{self._target}: collection {name} uses metric {metric}, not {METRIC}")
        await self._call(f"load {name}", lambda t: self._client.load_collection(name, timeout=t), budget)
        attached = _Collection(index_type=str(index.get("index_type", "")).upper())
        await self._migrate(name, budget)
        if self._writer_grace_s is None:  # the only writer: whatever no commit names is garbage
            await self._sweep(name, budget)
        return attached

    def _rows(
        self, tenant: str, collection: str, document_id: str, chunks: Sequence[ChunkRecord], version: int
    ) -> list[dict[str, Any]]:
        """Milvus rows for a document, after checking everything a server would reject."""
        validation.stored_document_id(document_id, "document_id")
        indexes = sorted(c.chunk_index for c in chunks)
        if indexes != list(range(len(chunks))):
            # A version is exactly chunks 0..n-1 (its commit row counts them).
            raise InvalidArgument("chunks", f"chunk_index values must be 0..{len(chunks) - 1}, each once")
        doc_key = _doc_key(tenant, collection, document_id)
        rows = []
        for i, chunk in enumerate(chunks):
            where = f"chunks[{i}]"
            if chunk.document_id != document_id:
                raise InvalidArgument(
                    f"{where}.document_id", f"is {chunk.document_id!r}, not {document_id!r}"
                )
            if validation.utf8_length(chunk.text, f"{where}.text") > MAX_TEXT_BYTES:
                raise InvalidArgument(f"{where}.text", f"longer than {MAX_TEXT_BYTES} bytes (UTF-8)")
            metadata = dict(chunk.metadata)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
                raise InvalidArgument(f"{where}.metadata", "keys and values must be strings")
            as_json = json.dumps(metadata, ensure_ascii=False)
            if validation.utf8_length(as_json, f"{where}.metadata") > MAX_METADATA_BYTES:
                raise InvalidArgument(f"{where}.metadata", f"larger than {MAX_METADATA_BYTES} bytes as JSON")
            rows.append(
                {
                    "pk": _chunk_pk(version, tenant, collection, document_id, chunk.chunk_index),
                    "doc_key": doc_key,
                    "tenant": tenant,
                    "document_id": document_id,
                    "chunk_index": chunk.chunk_index,
                    "text": chunk.text,
                    "metadata": metadata,
                    "vector": _vector(chunk.vector, self.dimension, f"{where}.vector"),
                }
            )
        return rows

    @contextlib.asynccontextmanager
    async def _document_locks(
        self, tenant: str, name: str, document_ids: Sequence[str]
    ) -> AsyncIterator[None]:
        """Serialise writers of the same documents (in sorted order, so two writers cannot deadlock).
        A lock lives only while someone holds or waits for it."""
        keys = sorted({(tenant, name, d) for d in document_ids})
        entries = []
        for key in keys:
            entry = self._doc_locks.get(key)
            if entry is None:
                entry = self._doc_locks[key] = _KeyLock(asyncio.Lock())
            entry.users += 1
            entries.append((key, entry))
        try:
            async with contextlib.AsyncExitStack() as stack:
                for _, entry in entries:
                    await stack.enter_async_context(entry.lock)
                yield
        finally:
            for key, entry in entries:
                entry.users -= 1
                if entry.users == 0:
                    del self._doc_locks[key]

    async def _call(self, what: str, op: Callable[[float], Awaitable[T]], budget: _TimeBudget) -> T:
        """Run one Milvus call with what is left of `budget`; its failures become MilvusUnavailable,
        running out of time IndexTimeout."""
        if self._closed:
            raise MilvusUnavailable(f"{what}: the store is closed")
        timeout = budget.left(what)
        try:
            # pymilvus enforces `timeout`; the backstop only bounds a call that ignores it.
            async with asyncio.timeout(timeout + _BACKSTOP_S):
                return await op(timeout)
        except TimeoutError as e:
            raise IndexTimeout(f"{what} on {self._target}: no answer within {timeout:.2f}s") from e
        except _PROGRAMMING_ERRORS:
            raise
        except MilvusException as e:
            message = f"{what} on {self._target} failed: {e.message}"
            if "timeout" in e.message.lower() or "deadline" in e.message.lower():
                raise IndexTimeout(message) from e
            raise MilvusUnavailable(message, e.code) from e
        except grpc.aio.AioRpcError as e:
            message = f"{what} on {self._target} failed: {e.code().name} {e.details() or ''}".rstrip()
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise IndexTimeout(message) from e
            raise MilvusUnavailable(message) from e
        except (grpc.RpcError, OSError) as e:
            raise MilvusUnavailable(f"{what} on {self._target} failed: {e!r}") from e


def _lite_path(uri: str) -> str | None:
    """The resolved file path when `uri` names a Milvus Lite file, else None."""
    if "://" in uri or not uri.endswith(".db"):
        return None
    return str(Path(uri).expanduser().resolve())


def _milvus_name(collection: str) -> str:
    return COLLECTION_PREFIX + validation.collection(collection)


def _vector(values: Sequence[float], dimension: int, field: str) -> list[float]:
    if len(values) != dimension:
        raise InvalidArgument(field, f"has {len(values)} dimensions, the store holds {dimension}")
    vector = [float(v) for v in values]
    if not all(math.isfinite(v) for v in vector):
        raise InvalidArgument(field, "has a NaN or infinite value")
    if not any(vector):
        raise InvalidArgument(field, "is all zeros (no cosine similarity)")
    return vector


def _hash(*parts: object) -> str:
    # JSON of the parts: unambiguous however the strings look.
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


def _doc_key(tenant: str, collection: str, document_id: str) -> str:
    return _hash(tenant, collection, document_id)


def _version_pk(version: int) -> str:
    """The smallest pk of a chunk row of `version` (chunk pks sort by version)."""
    return f"v{version:0{_VERSION_HEX}x}"


def _chunk_pk(version: int, *parts: object) -> str:
    return _version_pk(version) + _hash(version, *parts)[: _KEY_LEN - 1 - _VERSION_HEX]


def _commit_pk(doc_key: str, version: int) -> str:
    return "m" + _hash("commit", doc_key, version)[: _KEY_LEN - 1]


def _pk_in(pks: Sequence[str]) -> str:
    """`pk in [...]`; Lite 2.5.1 fails on an empty list, so that is a filter nothing matches."""
    if not pks:
        return f"chunk_index < {_LAYOUT_INDEX}"
    return f"pk in [{', '.join(_quote(p) for p in pks)}]"


def _row_version(pk: str) -> int:
    """The version a chunk row belongs to: legacy rows (40 hex digits) are version 0."""
    return int(pk[1 : 1 + _VERSION_HEX], 16) if pk.startswith("v") else LEGACY_VERSION


def _version_range(version: int) -> str:
    """A filter on the chunk rows of one version."""
    if version == LEGACY_VERSION:
        return 'pk < "v"'
    return f"(pk >= {_quote(_version_pk(version))} and pk < {_quote(_version_pk(version + 1))})"


def _outside_version(version: int) -> str:
    """A filter on the chunk rows of every other version (Lite 2.5.1 has no `not`)."""
    if version == LEGACY_VERSION:
        return 'pk >= "v"'
    return f"(pk < {_quote(_version_pk(version))} or pk >= {_quote(_version_pk(version + 1))})"


def _latest_commits(rows: Iterable[dict[str, Any]]) -> dict[str, Commit]:
    """Per document, the commit row of the highest version (others are being replaced or garbage),
    with every commit row's pk and version."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for row in rows:
        meta = row["metadata"]
        found.setdefault(str(row["doc_key"]), []).append(
            (int(str(meta["version"]), 16), int(meta["chunks"]), str(row.get("pk", "")))
        )
    latest = {}
    for doc_key, commits in found.items():
        version, chunks, _ = max(commits)
        latest[doc_key] = Commit(
            doc_key, version, chunks, tuple(pk for _, _, pk in commits), tuple(v for v, _, _ in commits)
        )
    return latest


def _committed_hits(
    hits: Sequence[dict[str, Any]], commits: dict[str, Commit]
) -> tuple[list[dict[str, Any]], bool]:
    """The hits of committed versions, and whether any hit was of a version older than its
    document's committed one (a commit may have landed during the search: search again)."""
    kept, superseded = [], False
    for hit in hits:
        commit = commits.get(str(hit["entity"]["doc_key"]))
        if commit is None:
            continue  # not committed yet, or deleted
        version = _row_version(str(hit["id"]))
        if version == commit.version:
            kept.append(hit)
        elif version < commit.version:
            superseded = True
    return kept, superseded


def _quote(value: str) -> str:
    """A Milvus expression string literal. Callers pass validated tenants and hex keys; escaping
    quote and backslash keeps even other strings inside the literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _eq(field: str, value: str) -> str:
    return f"{field} == {_quote(value)}"
