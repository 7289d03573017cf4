"""Wires the LLM service into the server kit: settings + profile -> engine -> core -> servicer."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from forge.v1 import llm_pb2, llm_pb2_grpc
from grpc import aio

from services.common.config import SkuProfile
from services.llm import packaged_models
from services.llm.core import LlmCore
from services.llm.engine import LlmEngine
from services.llm.prepare import SOURCE_MODEL, default_model_dir, is_prepared, prepare_model
from services.llm.servicer import LlmServicer
from services.llm.settings import LlmSettings

log = logging.getLogger(__name__)

LLM_SERVICE = llm_pb2.DESCRIPTOR.services_by_name["LlmService"].full_name


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class LlmApp:
    name = "llm"

    def __init__(self, profile: SkuProfile, home: Path, settings: LlmSettings | None = None) -> None:
        self.profile = profile
        self.home = home
        self.settings = settings or LlmSettings()
        self.core = LlmCore(self.settings, on_engine_dead=self._engine_died)
        self._device = "cpu"
        self._report_health: Callable[[bool], None] = lambda serving: None
        self._fail: Callable[[str], None] | None = None
        self._engine_watch: asyncio.Task[None] | None = None

    @property
    def grpc_service_names(self) -> Sequence[str]:
        return [LLM_SERVICE]

    @property
    def engine_name(self) -> str:
        return self.settings.engine or self.profile.llm_engine

    def packaged_model(self) -> packaged_models.PackagedModel:
        """FORGE_LLM_MODEL, else the profile's packaged model, else Forge's default."""
        spec = self.profile.model
        name = self.settings.model or (spec.packaged if spec else None) or packaged_models.DEFAULT_MODEL
        return packaged_models.lookup(name)

    def gguf_path(self) -> Path:
        """llama.cpp's GGUF: FORGE_LLM_GGUF_PATH, else the packaged model's (joined on first use)."""
        if self.settings.gguf_path is not None:
            return self.settings.gguf_path
        return packaged_models.gguf_path(self.packaged_model(), self.home / "models", progress=log.info)

    def model_path(self) -> Path:
        """The configured model folder, else the packaged SmolLM2 (prepared on first use)."""
        if self.settings.model_path is not None:
            return self.settings.model_path
        wanted = self.settings.model
        if wanted is not None and packaged_models.lookup(wanted).name != SOURCE_MODEL:
            raise packaged_models.ModelUnavailable(
                f"FORGE_LLM_MODEL={wanted} runs on the llama_cpp engine (FORGE_LLM_ENGINE=llama_cpp); "
                "vLLM serves a model folder (FORGE_LLM_MODEL_PATH) or the prepared smollm2-135m"
            )
        path = default_model_dir(self.home)
        if not is_prepared(path):
            log.info(
                "no prepared model at %s; preparing it now (`forge model prepare` does this ahead)", path
            )
            prepare_model(path)
        return path

    def register(self, server: aio.Server) -> None:
        llm_pb2_grpc.add_LlmServiceServicer_to_server(LlmServicer(self.core), server)

    def bind_health(self, report: Callable[[bool], None]) -> None:
        self._report_health = report

    def bind_fatal(self, fail: Callable[[str], None]) -> None:
        self._fail = fail

    def _engine_died(self) -> None:
        """The engine cannot serve again in this process: NOT_SERVING now, then (where the server
        kit bound it) drain and exit with EXIT_FATAL, so the supervisor starts a fresh process."""
        self._report_health(False)
        if self._fail is not None:
            self._fail(f"the {self.engine_name} engine died")
        else:
            log.error("LLM engine died; reporting NOT_SERVING")

    async def _watch_engine(self, engine: LlmEngine) -> None:
        """Notice a dead engine with no call in flight (vLLM's engine core killed while idle).
        A poll: neither engine offers an event for its own death."""
        while True:
            if engine.is_dead():
                log.error("%s engine died while idle", engine.name)
                self._engine_died()
                return
            await asyncio.sleep(self.settings.engine_watch_interval_s)

    def _start_llama_cpp(self, slice_fraction: float) -> LlmEngine:
        try:
            import llama_cpp
        except ImportError as exc:
            raise RuntimeError(
                "the llama_cpp engine needs llama-cpp-python: pip install '.[llamacpp]' "
                "(`make up` does), or FORGE_LLM_ENGINE=vllm FORGE_LLM_MODEL=tiny"
            ) from exc

        from services.llm.llama_cpp_engine import LlamaCppEngine

        # The slice decides placement: all layers on the GPU when the profile gives the LLM one and
        # this llama.cpp build can offload; the context (KV cache) is max_model_len either way.
        on_gpu = slice_fraction > 0 and bool(llama_cpp.llama_supports_gpu_offload())
        self._device = "cuda:0" if on_gpu else "cpu"
        return LlamaCppEngine.start(
            self.gguf_path(),
            n_ctx=self.settings.max_model_len,
            n_gpu_layers=-1 if on_gpu else 0,
            # llama.cpp's own default is half of os.cpu_count(), blind to the CPU set this
            # process is pinned to; one thread per CPU of the set uses the set, no more.
            n_threads=self.settings.llama_threads or len(os.sched_getaffinity(0)),
        )

    def _start_engine(self) -> LlmEngine:
        slice_fraction = self.profile.slices.of(self.name)
        if self.engine_name == "llama_cpp":
            return self._start_llama_cpp(slice_fraction)
        from services.llm.vllm_engine import VllmEngine

        on_gpu = slice_fraction > 0 and cuda_available()
        self._device = "cuda:0" if on_gpu else "cpu"
        # On CPUs without native bf16, bf16 matmuls fall back to slow kernels: measured here, float32
        # gave 5x lower time to first token and 3x the aggregate tokens/s of bfloat16.
        dtype = self.settings.dtype if self.settings.dtype != "auto" else ("auto" if on_gpu else "float32")
        return VllmEngine.start(
            self.model_path(),
            max_model_len=self.settings.max_model_len,
            max_num_seqs=self.settings.max_num_seqs,
            dtype=dtype,
            enforce_eager=self.settings.enforce_eager,
            gpu_memory_utilization=slice_fraction if on_gpu else None,
            cpu_kv_cache_bytes=self.settings.cpu_kv_cache_bytes,
            cache_root=self.home / "vllm-cache",
        )

    async def load(self) -> None:
        engine = await asyncio.to_thread(self._start_engine)
        self.core.attach(engine)
        self._engine_watch = asyncio.create_task(self._watch_engine(engine), name="llm-engine-watch")

    async def close(self) -> None:
        if self._engine_watch is not None:
            self._engine_watch.cancel()
            await asyncio.gather(self._engine_watch, return_exceptions=True)
        if self.core.engine is not None:
            await asyncio.to_thread(self.core.engine.shutdown)

    def compute_device(self) -> str:
        return self._device

    def settings_summary(self) -> Mapping[str, str]:
        s = self.settings
        return {
            "engine": self.engine_name,
            "model": self.core.engine.model_name if self.core.engine else "(loading)",
            "device": self._device,
            "max_model_len": str(s.max_model_len),
            "max_num_seqs": str(s.max_num_seqs),
            "cpu_kv_cache_bytes": str(s.cpu_kv_cache_bytes),
            "default_max_tokens": str(s.default_max_tokens),
        }
