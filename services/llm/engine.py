"""What the LLM service needs from an inference engine, independent of which engine it is.

vLLM (`vllm_engine.py`) is the engine on CPU and Volta+ GPUs; an engine for Pascal cards (the
Tesla P40, where vLLM does not run) implements the same interface.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class FinishReason(StrEnum):
    STOP = "stop"  # end of sequence or a stop string
    LENGTH = "length"  # max_tokens or the context limit


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # disabled
    stop: Sequence[str] = ()
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: Sampling
    # Lower runs first (interactive 0, batch 1) where the engine schedules by priority.
    priority: int = 0


@dataclass(frozen=True)
class GenerationChunk:
    """New text since the previous chunk; `finish_reason` is set on the last one."""

    text: str
    completion_tokens: int  # cumulative
    finish_reason: FinishReason | None = None
    # When the engine queued and first scheduled the request, in time.monotonic() seconds (the
    # host's monotonic clock, the same in the engine's own process); None where the engine does not
    # say (llama.cpp). Read from the first chunk, for the trace's llm.queue span.
    queued_at: float | None = None
    scheduled_at: float | None = None


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV-cache blocks in use
    extra: dict[str, float] = field(default_factory=dict)


class EngineDead(Exception):
    """The engine cannot serve any more requests (its process died); the service must report
    NOT_SERVING."""


class LlmEngine(Protocol):
    name: str  # "vllm", "llama_cpp"
    model_name: str
    max_context_tokens: int

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream one request. Closing the iterator early (cancel) must abort the request."""

    async def abort(self, request_id: str) -> None:
        """Stop a request and free its KV cache; a finished or unknown id is not an error."""

    def tokenize_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of (role, content) messages through the chat template, generation prompt added."""

    def tokenize_text(self, text: str) -> list[int]:
        """Token ids of a raw prompt as the engine will see it."""

    def stats(self) -> EngineStats: ...

    def is_dead(self) -> bool: ...

    def shutdown(self) -> None: ...
