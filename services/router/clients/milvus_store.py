"""The router's vector store: tenant-scoped document chunks in Milvus, through pymilvus' async client.

A Forge collection `<name>` is the Milvus collection `forge_<name>`, shared by all tenants; every row
carries its tenant and every read or delete filters on it server-side. The URI picks the backend: a
local path ending `.db` is a Milvus Lite file (one process per file), anything else a Milvus server.

Rows are keyed by a hash of (tenant, collection, document_id, chunk_index), so re-ingesting a document
upserts the same keys (idempotent) and then deletes the old version's surplus tail. Rows also carry
`doc_key`, a hash of (tenant, collection, document_id): deletes and counts filter on that hex string,
never on the raw document id, because Milvus Lite 2.5.1's expression parser cannot match a string with
a newline or carriage return in it, whatever the escaping.

Milvus Lite 2.5.1 also turns a rejected upsert into a delete (the old rows with those keys are gone,
the new ones never written) and does not enforce VARCHAR lengths, so every row is validated here,
before the one upsert call, against the limits a server would enforce.

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
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
    ) -> None:
        self._client = client
        self._target = target  # for messages: never the URI itself (it may carry credentials)
        self._lite_path = lite_path
        self.dimension = dimension
        self.index_type = index_type
        self.default_collection = default_collection
        self._timeout_s = timeout_s
        self._collections: dict[str, _Collection] = {}  # Milvus name -> known to exist, loaded, checked
        self._schema_lock = asyncio.Lock()
        self._doc_locks: dict[tuple[str, str, str], _KeyLock] = {}
        self._closed = False

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
    ) -> VectorStore:
        if not 1 <= dimension <= MAX_DIMENSION:
            raise ValueError(f"dimension must be in 1..{MAX_DIMENSION}, got {dimension}")
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {sorted(INDEX_TYPES)}, got {index_type!r}")
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
        number stored. An empty `chunks` deletes the document."""
        validation.tenant(tenant)
        name = _milvus_name(collection)
        rows = self._rows(tenant, collection, document_id, chunks)
        budget = self._budget(timeout_s)
        async with self._document_locks(tenant, name, [document_id]):
            if rows:
                await self._ensure(name, budget, create=True)
                # One upsert: a failure leaves the old version whole and no part of the new one.
                await self._call(
                    f"upsert into {name}", lambda t: self._client.upsert(name, rows, timeout=t), budget
                )
            elif not await self._ensure(name, budget, create=False):
                return 0
            # The old version's chunks beyond the new length; after the upsert, so a failure there
            # leaves the new version plus a stale tail, never a hole.
            stale = (
                f"{_eq('doc_key', _doc_key(tenant, collection, document_id))} and chunk_index >= {len(rows)}"
            )
            await self._call(
                f"delete from {name}",
                lambda t: self._client.delete(
                    name,
                    filter=f"{_eq('tenant', tenant)} and {stale}",
                    consistency_level="Strong",
                    timeout=t,
                ),
                budget,
            )
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
                found, deleted = await self._delete_keys(name, tenant, keys, budget)
                documents += found
                chunks += deleted
        return documents, chunks

    async def flush(self, collection: str, timeout_s: float | None = None) -> None:
        """Seal the collection's recent writes into persisted segments (Milvus does this by itself too;
        a Lite file keeps its data across close and reopen without it)."""
        name = _milvus_name(collection)
        budget = self._budget(timeout_s)
        if await self._ensure(name, budget, create=False):
            await self._call(f"flush {name}", lambda t: self._client.flush(name, timeout=t), budget)

    # --- reads --------------------------------------------------------------------------------

    async def search(
        self,
        tenant: str,
        collection: str,
        vector: Sequence[float],
        top_k: int,
        timeout_s: float | None = None,
    ) -> list[ContextChunk]:
        """The tenant's `top_k` chunks closest to `vector`, most similar first. An unknown collection
        holds nothing: []."""
        validation.tenant(tenant)
        name = _milvus_name(collection)
        query = _vector(vector, self.dimension, "vector")
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be in 1..{MAX_TOP_K}, got {top_k}")
        budget = self._budget(timeout_s)
        budget.left(f"search {name}")
        if not await self._ensure(name, budget, create=False):
            return []
        params = {"metric_type": METRIC, "params": self._collections[name].search_params(top_k)}
        try:
            result = await self._call(
                f"search {name}",
                lambda t: self._client.search(
                    name,
                    data=[query],
                    limit=top_k,
                    filter=_eq("tenant", tenant),
                    output_fields=_OUTPUT_FIELDS,
                    search_params=params,
                    # A document ingested just before must be found.
                    consistency_level="Strong",
                    timeout=t,
                ),
                budget,
            )
        except MilvusUnavailable as e:
            if e.milvus_code == _COLLECTION_NOT_FOUND:  # dropped behind our back
                self._collections.pop(name, None)
                return []
            raise
        hits = [
            ContextChunk(
                document_id=str(hit["entity"]["document_id"]),
                chunk_index=int(hit["entity"]["chunk_index"]),
                score=float(hit["distance"]),
                text=str(hit["entity"]["text"]),
                metadata={str(k): str(v) for k, v in (hit["entity"].get("metadata") or {}).items()},
            )
            for hit in result[0]
        ]
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits

    async def list_collections(self, tenant: str, timeout_s: float | None = None) -> list[tuple[str, int]]:
        """Forge collections holding chunks of this tenant, with the chunk counts, by name. The default
        collection is always listed; others only where the tenant has chunks (names are not shared
        across tenants)."""
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
            return await self._count(name, _eq("tenant", tenant), budget)

        counts = await asyncio.gather(*(count(c) for c in forge))
        return [(c, n) for c, n in zip(forge, counts, strict=True) if n > 0 or c == self.default_collection]

    # --- internals ----------------------------------------------------------------------------

    async def _delete_keys(
        self, name: str, tenant: str, doc_keys: Sequence[str], budget: _TimeBudget
    ) -> tuple[int, int]:
        where = f"{_eq('tenant', tenant)} and doc_key in [{', '.join(_quote(k) for k in doc_keys)}]"
        # Every stored document has a chunk 0 (a version is chunks 0..n-1 and only its tail is trimmed).
        firsts = await self._call(
            f"query {name}",
            lambda t: self._client.query(
                name,
                filter=f"{where} and chunk_index == 0",
                output_fields=["doc_key"],
                consistency_level="Strong",
                timeout=t,
            ),
            budget,
        )
        chunks = await self._count(name, where, budget)
        if chunks:
            await self._call(
                f"delete from {name}",
                lambda t: self._client.delete(name, filter=where, consistency_level="Strong", timeout=t),
                budget,
            )
        return len({row["doc_key"] for row in firsts}), chunks

    async def _count(self, name: str, where: str, budget: _TimeBudget) -> int:
        rows = await self._call(
            f"count in {name}",
            lambda t: self._client.query(
                name, filter=where, output_fields=["count(*)"], consistency_level="Strong", timeout=t
            ),
            budget,
        )
        return int(rows[0]["count(*)"]) if rows else 0

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
        return _Collection(index_type=str(index.get("index_type", "")).upper())

    def _rows(
        self, tenant: str, collection: str, document_id: str, chunks: Sequence[ChunkRecord]
    ) -> list[dict[str, Any]]:
        """Milvus rows for a document, after checking everything a server would reject."""
        validation.stored_document_id(document_id, "document_id")
        indexes = sorted(c.chunk_index for c in chunks)
        if indexes != list(range(len(chunks))):
            # The stale-tail delete relies on a version being exactly chunks 0..n-1.
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
                    "pk": _hash(tenant, collection, document_id, chunk.chunk_index),
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


def _quote(value: str) -> str:
    """A Milvus expression string literal. Callers pass validated tenants and hex keys; escaping
    quote and backslash keeps even other strings inside the literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _eq(field: str, value: str) -> str:
    return f"{field} == {_quote(value)}"
