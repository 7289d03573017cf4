"""llama.cpp (llama-cpp-python) behind the LlmEngine interface: the engine for Pascal cards such as
the Tesla P40, where vLLM does not run (it needs compute capability 7.0+). It loads the GGUF as is.

llama.cpp's Python binding runs one sequence at a time (no continuous batching) and is not
thread-safe, so requests take turns on one worker thread; the others wait in order of priority,
and a cancelled request stops at the next token.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import re
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from services.llm.engine import EngineDead, EngineStats, FinishReason, GenerationChunk, GenerationRequest

log = logging.getLogger(__name__)

_DECODE_FAILED = re.compile(r"llama_decode returned (-?\d+)")


def leaves_engine_unusable(exc: BaseException) -> bool:
    """Whether a llama.cpp error means the context cannot serve again in this process.

    llama_decode's return codes: 1 (no KV slot) and 2 (aborted) concern one request, -1 a bad
    batch (one request's input); below -1 the backend itself failed (a GPU fault, a compute
    error), and every later request fails the same way. A fault inside the library (ggml_abort,
    a segfault) takes the whole process down, and its supervisor restarts it as any other exit."""
    match = _DECODE_FAILED.search(str(exc)) if isinstance(exc, RuntimeError) else None
    return match is not None and int(match.group(1)) < -1


class _Turns:
    """Hands the single llama.cpp context to one request at a time, lowest priority value first."""

    def __init__(self) -> None:
        self._busy = False
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._queue if not f.done())

    @property
    def busy(self) -> bool:
        return self._busy

    async def acquire(self, priority: int) -> None:
        if not self._busy and not self.waiting:
            self._busy = True
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (priority, next(self._order), turn))
        await turn  # a cancelled waiter leaves its future cancelled; release() skips it

    def release(self) -> None:
        while self._queue:
            _, _, turn = heapq.heappop(self._queue)
            if not turn.done():
                turn.set_result(None)
                return
        self._busy = False


class LlamaCppEngine:
    name = "llama_cpp"

    def __init__(self, llama: Any, model_name: str, max_context_tokens: int) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llama = llama
        self.model_name = model_name
        self.max_context_tokens = max_context_tokens
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError(f"{model_name} has no chat template in its GGUF metadata")
        self._chat = Jinja2ChatFormatter(
            template=template,
            eos_token=self._piece(llama.token_eos()),
            bos_token=self._piece(llama.token_bos()),
            add_generation_prompt=True,
        )
        self._turns = _Turns()
        self._cancelled: dict[str, threading.Event] = {}
        self._dead = False

    def _piece(self, token: int) -> str:
        return str(self._llama.detokenize([token], special=True).decode("utf-8", errors="replace"))

    @classmethod
    def start(
        cls, gguf_path: Path, *, n_ctx: int, n_gpu_layers: int, n_threads: int | None
    ) -> LlamaCppEngine:
        import llama_cpp

        llama = llama_cpp.Llama(
            model_path=str(gguf_path),
            n_ctx=n_ctx,
            n_gpu_layers=n_gpu_layers,
            n_threads=n_threads,
            verbose=False,
        )
        log.info("llama.cpp engine up: %s, context %d, %d GPU layers", gguf_path.name, n_ctx, n_gpu_layers)
        return cls(llama, gguf_path.stem, n_ctx)

    def _run(self, request: GenerationRequest, cancelled: threading.Event, emit: Any) -> None:
        """On the worker thread: stream one completion, handing chunks to the event loop."""
        s = request.sampling
        prompt_len = len(request.prompt_token_ids)
        chunks = self._llama.create_completion(
            prompt=request.prompt_token_ids,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=max(s.top_k, 0),  # llama.cpp: 0 disables
            stop=list(s.stop) or None,
            seed=s.seed,
            stream=True,
        )
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                # The last sampled token (EOS, or the max_tokens-th) is not fed back into the context.
                generated = self._llama.n_tokens - prompt_len + (1 if choice["finish_reason"] else 0)
                emit((choice["text"], generated, choice["finish_reason"]))
                if cancelled.is_set():
                    break
        finally:
            chunks.close()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        cancelled = threading.Event()
        self._cancelled[request.request_id] = cancelled
        queue: asyncio.Queue[tuple[str, int, str | None] | BaseException | None] = asyncio.Queue()

        def emit(item: tuple[str, int, str | None] | BaseException | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                self._run(request, cancelled, emit)
                emit(None)
            except BaseException as exc:  # handed to the caller on the loop
                emit(exc)

        try:
            await self._turns.acquire(request.priority)
            try:
                worker = loop.run_in_executor(None, work)
                while (item := await queue.get()) is not None:
                    if isinstance(item, BaseException):
                        if leaves_engine_unusable(item):
                            self._dead = True
                            raise EngineDead(f"llama.cpp failed: {item}") from item
                        raise item
                    text, generated, finish = item
                    reason = (
                        None
                        if finish is None
                        else FinishReason.LENGTH
                        if finish == "length"
                        else FinishReason.STOP
                    )
                    yield GenerationChunk(text, max(generated, 0), reason)
                    if reason is not None:
                        break
            finally:
                cancelled.set()
                await asyncio.shield(worker)  # the context is free only once the thread has stopped
                self._turns.release()
        finally:
            self._cancelled.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        event = self._cancelled.get(request_id)
        if event is not None:
            event.set()

    def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        turns: list[Any] = [{"role": r, "content": c} for r, c in messages]
        prompt = self._chat(messages=turns).prompt
        return self.tokenize_text(prompt)

    def tokenize_text(self, text: str) -> list[int]:
        return [int(t) for t in self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)]

    def stats(self) -> EngineStats:
        return EngineStats(running=1 if self._turns.busy else 0, waiting=self._turns.waiting)

    def is_dead(self) -> bool:
        return self._dead

    def shutdown(self) -> None:
        self._llama.close()
