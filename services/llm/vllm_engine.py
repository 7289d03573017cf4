"""vLLM's AsyncLLM behind the LlmEngine interface.

vLLM runs its engine core in a separate process; this adapter lives in the service's event loop.
On CPU the KV cache is sized explicitly (else vLLM reserves most of RAM); on a GPU the service's
slice becomes `gpu_memory_utilization`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from services.llm.engine import (
    EngineDead,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
)

log = logging.getLogger(__name__)


def _stat_logger_factory(stats: EngineStats) -> Any:
    """A vLLM stat logger that copies scheduler figures into `stats` at every engine step."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class ForgeStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            if scheduler_stats is not None:
                stats.running = scheduler_stats.num_running_reqs
                stats.waiting = scheduler_stats.num_waiting_reqs
                stats.kv_cache_usage = scheduler_stats.kv_cache_usage

        def log_engine_initialized(self) -> None:
            pass

    return ForgeStatLogger


def _queue_times(output: Any) -> tuple[float | None, float | None]:
    """When vLLM's engine core queued and first scheduled the request (its RequestStateStats, in
    time.monotonic() seconds), when it logs stats; else (None, None)."""
    stats = getattr(output, "metrics", None)
    queued = getattr(stats, "queued_ts", 0.0) or 0.0
    scheduled = getattr(stats, "scheduled_ts", 0.0) or 0.0
    if queued <= 0.0 or scheduled < queued:
        return None, None
    return float(queued), float(scheduled)


class VllmEngine:
    name = "vllm"

    def __init__(self, engine: Any, model_name: str, max_context_tokens: int, stats: EngineStats) -> None:
        self._engine = engine
        self._tokenizer = engine.get_tokenizer()
        self.model_name = model_name
        self.max_context_tokens = max_context_tokens
        self._stats = stats

    @classmethod
    def start(
        cls,
        model_path: Path,
        *,
        max_model_len: int,
        max_num_seqs: int,
        dtype: str,
        enforce_eager: bool,
        gpu_memory_utilization: float | None,
        cpu_kv_cache_bytes: int,
        cache_root: Path,
    ) -> VllmEngine:
        """Start the engine (tens of seconds on CPU). Must run in a process whose entry point has a
        `__main__` guard: vLLM spawns its engine-core process."""
        os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root))
        # stdout carries the service's JSON lifecycle lines; vLLM's logs belong on stderr.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        options: dict[str, Any] = {
            "model": str(model_path),
            "served_model_name": model_path.name,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "dtype": dtype,
            "enforce_eager": enforce_eager,
            "disable_log_stats": False,  # our stat logger needs the scheduler stats
            "scheduling_policy": "priority",
        }
        if gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            options["kv_cache_memory_bytes"] = cpu_kv_cache_bytes
        stats = EngineStats()
        engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**options), stat_loggers=[_stat_logger_factory(stats)]
        )
        log.info("vLLM engine up: %s, context %d, %d sequences", model_path.name, max_model_len, max_num_seqs)
        return cls(engine, model_path.name, max_model_len, stats)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.exceptions import EngineDeadError

        s = request.sampling
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            stop=list(s.stop) or None,
            seed=s.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        completion_tokens = 0
        try:
            async for output in self._engine.generate(
                TokensPrompt(prompt_token_ids=request.prompt_token_ids),
                params,
                request_id=request.request_id,
                priority=request.priority,
            ):
                completion = output.outputs[0]
                first = completion_tokens == 0
                completion_tokens += len(completion.token_ids)
                finish = None
                if output.finished:
                    finish = (
                        FinishReason.LENGTH if completion.finish_reason == "length" else FinishReason.STOP
                    )
                queued_at, scheduled_at = _queue_times(output) if first else (None, None)
                yield GenerationChunk(completion.text, completion_tokens, finish, queued_at, scheduled_at)
        except EngineDeadError as exc:
            raise EngineDead(str(exc)) from exc

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        encoded = self._tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            add_generation_prompt=True,
            tokenize=True,
        )
        ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
        return [int(i) for i in ids]

    def tokenize_text(self, text: str) -> list[int]:
        return [int(i) for i in self._tokenizer.encode(text)]

    def stats(self) -> EngineStats:
        return self._stats

    def is_dead(self) -> bool:
        return bool(self._engine.errored)

    def shutdown(self) -> None:
        self._engine.shutdown()
