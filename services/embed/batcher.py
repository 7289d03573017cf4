"""Dynamic micro-batching: requests that arrive while the model is busy (or within `max_wait_s`
of an idle model) are merged into one model call of up to `max_batch_size` texts.

Requests are grouped by a key (the embedding kind); a model call never mixes keys. The model
runs on one dedicated thread, so the event loop stays free to accept and answer calls.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from services.common.encoder import Vectors
from services.common.errors import ResourceExhausted, Unavailable
from services.embed import metrics

K = TypeVar("K", bound=Hashable)
RunBatch = Callable[[K, list[str]], Vectors]


@dataclass
class BatchTiming:
    """How one request was served, for its trace: when it was queued, when the model call of its
    batch started and ended (epoch nanoseconds), and how big that batch was."""

    enqueued_ns: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    batch_texts: int = 0
    batch_requests: int = 0


@dataclass
class _Pending(Generic[K]):
    key: K
    texts: list[str]
    future: asyncio.Future[Vectors]
    enqueued_at: float = field(default_factory=time.perf_counter)
    timing: BatchTiming | None = None


class MicroBatcher(Generic[K]):
    def __init__(
        self,
        run_batch: RunBatch[K],
        max_batch_size: int,
        max_wait_s: float,
        max_queued_texts: int,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queued_texts = max_queued_texts
        self._pending: deque[_Pending[K]] = deque()
        self._queued_texts = 0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-model")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        # Seconds per text of the last batch, for a Retry-After that means something.
        self._seconds_per_text = 0.01

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="embed-batcher")

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._pending:
            item = self._take_first()
            if not item.future.done():
                item.future.set_exception(Unavailable("embed model", "the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, key: K, texts: list[str], timing: BatchTiming | None = None) -> Vectors:
        """Vectors for `texts`, one row per text, computed in some batch with other requests.
        `timing`, when given, is filled in with how the request was batched."""
        if self._closed or self._worker is None:
            raise Unavailable("embed model", "the batcher is not running")
        if self._queued_texts + len(texts) > self.max_queued_texts:
            metrics.REJECTED.labels("QUEUE_FULL").inc()
            backlog_s = self._queued_texts * self._seconds_per_text
            raise ResourceExhausted(
                "QUEUE_FULL",
                f"embedding queue is full ({self._queued_texts} of {self.max_queued_texts} texts waiting)",
                retry_after_s=max(0.05, backlog_s),
            )
        item = _Pending(key, texts, asyncio.get_running_loop().create_future(), timing=timing)
        if timing is not None:
            timing.enqueued_ns = time.time_ns()
        self._pending.append(item)
        self._queued_texts += len(texts)
        metrics.QUEUED_TEXTS.set(self._queued_texts)
        self._arrived.set()
        return await item.future  # a cancelled caller cancels the future; its batch skips it

    def _take_first(self) -> _Pending[K]:
        item = self._pending.popleft()
        self._queued_texts -= len(item.texts)
        return item

    def _texts_ready(self, key: K) -> int:
        return sum(len(p.texts) for p in self._pending if p.key == key and not p.future.done())

    def _take_batch(self) -> list[_Pending[K]]:
        """FIFO requests of the oldest request's key, up to max_batch_size texts (at least one)."""
        while self._pending and self._pending[0].future.done():
            self._take_first()  # cancelled while waiting
        if not self._pending:
            return []
        key = self._pending[0].key
        batch: list[_Pending[K]] = []
        size = 0
        kept: deque[_Pending[K]] = deque()
        while self._pending:
            item = self._pending.popleft()
            fits = not batch or size + len(item.texts) <= self.max_batch_size
            if item.key == key and fits and not item.future.done():
                batch.append(item)
                size += len(item.texts)
            elif not item.future.done():
                kept.append(item)
            if size >= self.max_batch_size:
                break
        kept.extend(self._pending)
        self._pending = kept
        self._queued_texts = sum(len(p.texts) for p in self._pending)
        metrics.QUEUED_TEXTS.set(self._queued_texts)
        return batch

    async def _gather(self) -> None:
        """Wait until the oldest key has a full batch or the oldest request has waited max_wait_s."""
        loop = asyncio.get_running_loop()
        deadline = self._pending[0].enqueued_at - time.perf_counter() + loop.time() + self.max_wait_s
        while self._pending and self._texts_ready(self._pending[0].key) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._gather()
            batch = self._take_batch()
            if not batch:
                continue
            texts = [t for item in batch for t in item.texts]
            started = time.perf_counter()
            started_ns = time.time_ns()
            for item in batch:
                metrics.QUEUE_WAIT_SECONDS.observe(started - item.enqueued_at)
            try:
                vectors = await loop.run_in_executor(self._executor, self._run_batch, batch[0].key, texts)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(Unavailable("embed model", "the service is shutting down"))
                raise
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            elapsed = time.perf_counter() - started
            finished_ns = time.time_ns()
            for item in batch:
                if item.timing is not None:
                    item.timing.started_ns, item.timing.finished_ns = started_ns, finished_ns
                    item.timing.batch_texts, item.timing.batch_requests = len(texts), len(batch)
            self._seconds_per_text = elapsed / len(texts)
            metrics.BATCH_SIZE.observe(len(texts))
            metrics.BATCH_SECONDS.observe(elapsed)
            offset = 0
            for item in batch:
                rows = vectors[offset : offset + len(item.texts)]
                offset += len(item.texts)
                if not item.future.done():
                    item.future.set_result(rows)
