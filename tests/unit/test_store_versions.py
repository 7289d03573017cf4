"""The version and commit logic of the Milvus store on its own: how chunk keys order by version,
which commit row stands for a document, and which search hits a reader keeps."""

from __future__ import annotations

from typing import Any

from services.router.clients import milvus_store as ms


def commit_row(doc_key: str, version: int, chunks: int) -> dict[str, Any]:
    return {
        "pk": ms._commit_pk(doc_key, version),
        "doc_key": doc_key,
        "metadata": {"version": f"{version:x}", "chunks": chunks},
    }


def hit(doc_key: str, version: int, index: int) -> dict[str, Any]:
    pk = ms._chunk_pk(version, "t", "c", doc_key, index) if version else ms._hash("t", "c", doc_key, index)
    return {"id": pk, "distance": 0.5, "entity": {"doc_key": doc_key}}


def test_chunk_keys_sort_by_version_and_legacy_keys_sort_first() -> None:
    legacy = ms._hash("t", "c", "doc", 0)
    keys = [ms._chunk_pk(v, "t", "c", "doc", i) for v in (5, 300, 2**59) for i in (0, 7)]
    assert all(len(k) == 40 for k in [legacy, *keys])
    assert sorted([*keys, legacy]) == [legacy, *keys]
    assert [ms._row_version(k) for k in keys] == [5, 5, 300, 300, 2**59, 2**59]
    assert ms._row_version(legacy) == ms.LEGACY_VERSION
    # A version's range holds its keys and no other version's.
    low, high = ms._version_pk(300), ms._version_pk(301)
    assert [low <= k < high for k in keys] == [False, False, True, True, False, False]


def test_versions_increase_within_a_process() -> None:
    store = ms.VectorStore.__new__(ms.VectorStore)
    store._last_version = 0
    versions = [store._next_version() for _ in range(1000)]
    assert versions == sorted(set(versions))
    assert versions[-1] < 16**ms._VERSION_HEX


def test_the_highest_commit_row_stands() -> None:
    rows = [commit_row("a", 7, 3), commit_row("a", 9, 1), commit_row("b", 0, 4)]
    latest = ms._latest_commits(rows)
    assert (latest["a"].version, latest["a"].chunks) == (9, 1)
    assert sorted(latest["a"].rows) == sorted([rows[0]["pk"], rows[1]["pk"]])
    assert (latest["b"].version, latest["b"].chunks) == (0, 4)


def test_readers_keep_committed_hits_and_search_again_after_a_commit() -> None:
    commits = ms._latest_commits([commit_row("a", 9, 2), commit_row("b", 0, 1)])
    hits = [hit("a", 9, 0), hit("a", 12, 0), hit("b", 0, 0), hit("c", 3, 0)]
    kept, superseded = ms._committed_hits(hits, commits)
    # a@12 is not committed yet, c has no commit: dropped, and no reason to search again.
    assert [h["id"] for h in kept] == [hits[0]["id"], hits[2]["id"]] and not superseded
    kept, superseded = ms._committed_hits([hit("a", 7, 0), hit("a", 9, 1)], commits)
    # a@7 is older than the committed version: a commit landed while searching.
    assert [h["id"] for h in kept] == [hit("a", 9, 1)["id"]] and superseded
