"""LLM service settings (environment: FORGE_LLM_<NAME>)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024**2


class LlmSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGE_LLM_", extra="forbid", protected_namespaces=())

    # A local Hugging Face model folder; unset = SmolLM2-135M-Instruct prepared by `forge model prepare`.
    model_path: Path | None = None
    # llama_cpp engine: the GGUF to load; unset = the packaged model below.
    gguf_path: Path | None = None
    # A model shipped in packages (services/llm/packaged_models.py): qwen2.5-coder-0.5b,
    # qwen2.5-coder-1.5b, smollm2-135m (alias tiny). Unset = the SKU profile's (model.packaged),
    # else qwen2.5-coder-0.5b. vLLM serves only smollm2-135m of these (prepared as a folder).
    model: str | None = None
    # llama_cpp engine: CPU threads (unset = llama.cpp's default).
    llama_threads: Annotated[int, Field(ge=1)] | None = None
    # Overrides the SKU profile's llm_engine.
    engine: Literal["vllm", "llama_cpp"] | None = None
    # Context window the engine reserves per sequence (prompt + generated tokens).
    max_model_len: Annotated[int, Field(ge=128)] = 2048
    # Sequences the engine batches at once; also the service's hard concurrency limit.
    max_num_seqs: Annotated[int, Field(ge=1, le=1024)] = 16
    # CPU only: KV-cache memory (the CPU form of the service's memory slice).
    cpu_kv_cache_bytes: Annotated[int, Field(ge=16 * MIB)] = 512 * MIB
    # auto = the model's dtype on a GPU, float32 on a CPU (bf16 is slow without hardware support).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    # Eager mode starts in seconds on CPU; compiled mode takes minutes for little gain there.
    enforce_eager: bool = True
    # Tokens generated when the request does not say.
    default_max_tokens: Annotated[int, Field(ge=1)] = 256
    # Request size limits, checked before tokenising, for Generate and Tokenize alike (Tokenize
    # counts a prompt before it is generated from, so the same input must pass both). 65,536
    # characters is ~16k tokens, 8x the default context: enough to say "too long" in tokens,
    # while tokenising it costs milliseconds. Roles must be system, user or assistant.
    max_messages: Annotated[int, Field(ge=1)] = 128
    max_input_chars: Annotated[int, Field(ge=1)] = 65_536
    max_stop_sequences: Annotated[int, Field(ge=0)] = 8
    max_stop_chars: Annotated[int, Field(ge=1)] = 64
    max_request_id_chars: Annotated[int, Field(ge=1)] = 128
    # How often the service checks that its engine is alive while no call is in flight; a dead one
    # makes the process drain and exit with code 3 (EXIT_FATAL) for its supervisor to restart.
    engine_watch_interval_s: Annotated[float, Field(gt=0, le=60)] = 1.0
