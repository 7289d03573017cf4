from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from services.common.encoder import Vectors
from services.common.errors import ResourceExhausted, Unavailable
from services.embed.batcher import MicroBatcher


class RecordingModel:
    """Stands in for the model in these logic tests: row i = [len(text_i), batch number]."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.gate: threading.Event | None = None
        self.fail_next = False
        self.started = threading.Event()

    def __call__(self, key: str, texts: list[str]) -> Vectors:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.calls.append((key, list(texts)))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        return np.array([[len(t), len(self.calls)] for t in texts], dtype=np.float32)


async def make(model: RecordingModel, **kw: float) -> MicroBatcher[str]:
    batcher: MicroBatcher[str] = MicroBatcher(
        model,
        max_batch_size=int(kw.get("max_batch_size", 8)),
        max_wait_s=kw.get("max_wait_s", 1.0),
        max_queued_texts=int(kw.get("max_queued_texts", 1000)),
    )
    batcher.start()
    return batcher


async def test_concurrent_requests_share_one_model_call_and_get_their_own_rows() -> None:
    model = RecordingModel()
    batcher = await make(model, max_batch_size=8)
    texts = ["a" * (i + 1) for i in range(8)]
    results = await asyncio.gather(*(batcher.submit("q", [t]) for t in texts))
    assert len(model.calls) == 1 and len(model.calls[0][1]) == 8
    for text, rows in zip(texts, results, strict=True):
        assert rows.shape == (1, 2) and rows[0, 0] == len(text)
    await batcher.close()


async def test_batches_never_exceed_max_batch_size() -> None:
    model = RecordingModel()
    batcher = await make(model, max_batch_size=10, max_wait_s=0.2)
    await asyncio.gather(*(batcher.submit("q", ["x"]) for _ in range(25)))
    sizes = [len(texts) for _, texts in model.calls]
    assert sum(sizes) == 25 and max(sizes) == 10 and len(sizes) == 3
    await batcher.close()


async def test_multi_text_requests_stay_whole_and_in_order() -> None:
    model = RecordingModel()
    batcher = await make(model, max_batch_size=6)
    first, second = await asyncio.gather(
        batcher.submit("d", ["a", "bb", "ccc"]), batcher.submit("d", ["dddd"] * 3)
    )
    assert first[:, 0].tolist() == [1, 2, 3] and second[:, 0].tolist() == [4, 4, 4]
    await batcher.close()


async def test_keys_are_never_mixed_in_one_call() -> None:
    model = RecordingModel()
    batcher = await make(model, max_batch_size=4, max_wait_s=0.05)
    await asyncio.gather(*(batcher.submit("query" if i % 2 else "document", [str(i)]) for i in range(8)))
    for key, texts in model.calls:
        expected = "query" if key == "query" else "document"
        assert all(("query" if int(t) % 2 else "document") == expected for t in texts)
    await batcher.close()


async def test_a_lone_request_runs_after_max_wait() -> None:
    model = RecordingModel()
    batcher = await make(model, max_batch_size=64, max_wait_s=0.01)
    rows = await asyncio.wait_for(batcher.submit("q", ["alone"]), timeout=5)
    assert rows[0, 0] == 5 and len(model.calls) == 1
    await batcher.close()


async def test_requests_arriving_while_the_model_is_busy_form_the_next_batch() -> None:
    model = RecordingModel()
    model.gate = threading.Event()
    batcher = await make(model, max_batch_size=16, max_wait_s=0.0)
    first = asyncio.create_task(batcher.submit("q", ["first"]))
    await asyncio.to_thread(model.started.wait, 10)  # the model is now busy with batch 1
    waiting = [asyncio.create_task(batcher.submit("q", [f"w{i}"])) for i in range(5)]
    cancelled = asyncio.create_task(batcher.submit("q", ["cancelled"]))
    await asyncio.sleep(0)  # let the submits enqueue
    cancelled.cancel()
    model.gate.set()
    await first
    await asyncio.gather(*waiting)
    assert [len(texts) for _, texts in model.calls] == [1, 5]
    assert "cancelled" not in model.calls[1][1]
    assert batcher.queued_texts == 0
    await batcher.close()


async def test_full_queue_is_refused_with_retry_advice() -> None:
    model = RecordingModel()
    model.gate = threading.Event()
    batcher = await make(model, max_batch_size=2, max_wait_s=0.0, max_queued_texts=4)
    busy = asyncio.create_task(batcher.submit("q", ["x", "y"]))
    await asyncio.to_thread(model.started.wait, 10)
    queued = asyncio.create_task(batcher.submit("q", ["1", "2", "3"]))
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted) as refused:
        await batcher.submit("q", ["4", "5"])
    assert refused.value.reason == "QUEUE_FULL" and refused.value.retry_after_s > 0
    model.gate.set()
    await asyncio.gather(busy, queued)
    await batcher.close()


async def test_a_model_error_fails_its_batch_only() -> None:
    model = RecordingModel()
    model.fail_next = True
    batcher = await make(model, max_batch_size=4, max_wait_s=0.0)
    with pytest.raises(RuntimeError, match="model exploded"):
        await batcher.submit("q", ["boom"])
    rows = await batcher.submit("q", ["fine"])
    assert rows[0, 0] == 4
    await batcher.close()


async def test_close_fails_waiting_requests_as_unavailable() -> None:
    model = RecordingModel()
    model.gate = threading.Event()
    batcher = await make(model, max_batch_size=1, max_wait_s=0.0)
    busy = asyncio.create_task(batcher.submit("q", ["running"]))
    await asyncio.to_thread(model.started.wait, 10)
    waiting = asyncio.create_task(batcher.submit("q", ["waiting"]))
    await asyncio.sleep(0)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)
    model.gate.set()
    await closing
    for task in (busy, waiting):
        with pytest.raises(Unavailable, match="shutting down"):
            await task
    with pytest.raises(Unavailable):
        await batcher.submit("q", ["late"])
