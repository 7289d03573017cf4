"""SKU profiles: the GPU memory plan, CPU sets and session limits of one appliance model.

Loaded from `deploy/sku_profiles.yaml` (or `FORGE_SKU_PROFILES`), overridden field by field from
`FORGE_PROFILE__<FIELD>[__<SUBFIELD>]` environment variables, and validated as a whole: every
service checks the complete plan at start, so the outcome never depends on start order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.cpusets import CPU_SET_SERVICES, CPU_SET_SHARED_WITH, CpuSetError, parse_cpu_list
from services.common.yamlfile import read_yaml, validation_problems

GIB = 1024**3
SERVICES_WITH_SLICES = ("llm", "embed", "guardrails", "milvus")
ENV_OVERRIDE_PREFIX = "FORGE_PROFILE__"
PROFILES_FILE_ENV = "FORGE_SKU_PROFILES"
# MPS needs Volta (compute capability 7.0) or newer and is not available on Jetson.
MPS_MIN_COMPUTE_CAPABILITY = 7.0
# Forge's own processes that may hold GPU memory (Milvus, when on a GPU, is a server of its own).
GPU_SERVICES = ("llm", "embed", "guardrails")
# Under MPS a service's hard limit is its slice plus this much for its CUDA context, which the
# in-process caps (torch memory fraction, vLLM gpu_memory_utilization) do not count; the buffer
# must hold it for every service with a slice.
MPS_CONTEXT_RESERVE_BYTES = 1024 * 1024**2

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ConfigError(ValueError):
    """A profile file or override that cannot be used; the message says which field and why."""


class Isolation(StrEnum):
    NONE = "none"
    SOFTWARE = "software"
    MPS = "mps"
    TIME_SLICING = "time_slicing"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSpec(_Strict):
    name: str
    memory_gib: Annotated[float, Field(ge=0)]
    unified_memory: bool = False
    compute_capability: str | None = None

    @property
    def has_gpu(self) -> bool:
        return self.memory_gib > 0

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GIB)


class Slices(_Strict):
    llm: Fraction = 0.0
    embed: Fraction = 0.0
    guardrails: Fraction = 0.0
    milvus: Fraction = 0.0

    def of(self, service: str) -> float:
        if service not in SERVICES_WITH_SLICES:
            return 0.0  # the router and tools never hold GPU memory
        return float(getattr(self, service))


class CpuSets(_Strict):
    """Logical CPUs per service (services.common.cpusets): "0", "1-3", "0,2", "1-" (CPU 1 to the
    last). `host_cpus` is the CPU count of the box the sets are written for. No sets (`none`, the
    default) = no pinning, as before CPU sets."""

    host_cpus: Annotated[int, Field(ge=1)] | None = None
    router: str | None = None
    guardrails: str | None = None
    embed: str | None = None
    llm: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _none_means_no_sets(cls, data: Any) -> Any:
        # `none`, or YAML's null / off (false): no sets.
        if data is None or data is False or (isinstance(data, str) and data.strip().lower() in ("none", "")):
            return {}
        if isinstance(data, dict):  # YAML reads 0 or 1 as a number
            return {
                k: (str(v) if k in CPU_SET_SERVICES and isinstance(v, int) else v) for k, v in data.items()
            }
        return data

    @model_validator(mode="after")
    def _sets_fit_the_box(self) -> CpuSets:
        named = {s: getattr(self, s) for s in CPU_SET_SERVICES if getattr(self, s) is not None}
        if not named:
            return self
        if missing := [s for s in CPU_SET_SERVICES if s not in named]:
            raise ValueError(
                f"CPU sets must name every service or none ({', '.join(CPU_SET_SERVICES)}); "
                f"missing {', '.join(missing)} (a service without a set would run on the others' CPUs)"
            )
        if self.host_cpus is None:
            raise ValueError("host_cpus (the CPU count of the box the sets are written for) is required")
        for service, text in named.items():
            try:
                spec = parse_cpu_list(text)
            except CpuSetError as exc:
                raise ValueError(f"{service}: {exc}") from exc
            if spec.needs_cpus > self.host_cpus:
                raise ValueError(
                    f"{service}: CPU set {text!r} needs {spec.needs_cpus} CPUs, host_cpus is {self.host_cpus}"
                )
        return self

    @property
    def enabled(self) -> bool:
        return self.llm is not None

    def of(self, service: str) -> str | None:
        """The service's set as written, or None (no sets, or a process without one)."""
        service = CPU_SET_SHARED_WITH.get(service, service)
        return getattr(self, service) if service in CPU_SET_SERVICES else None


class QueueConfig(_Strict):
    enabled: bool = False
    max_depth: Annotated[int, Field(ge=1)] = 32
    max_wait_interactive_s: Annotated[float, Field(gt=0)] = 5.0
    max_wait_batch_s: Annotated[float, Field(gt=0)] = 30.0


class AdmissionConfig(_Strict):
    max_sessions: Annotated[int, Field(ge=1)]
    # 0 = no per-tenant cap.
    max_sessions_per_tenant: Annotated[int, Field(ge=0)] = 0
    queue: QueueConfig = QueueConfig()


class ModelSpec(_Strict):
    """The LLM a profile is sized for, and what it takes of the LLM's slice: its weights plus a KV
    cache of `context_tokens` for every admitted session. Configuration: the cpu profile's model
    ships in a package; on a GPU the operator provides the weights (FORGE_LLM_MODEL_PATH, or
    FORGE_LLM_GGUF_PATH for llama.cpp) and the profile says whether they fit."""

    name: str
    # bf16 | fp8 | awq-int4 | q4_k_m ... (as the weights are stored)
    quantization: str
    weights_gib: Annotated[float, Field(gt=0)]
    # 2 (K and V) x layers x KV heads x head dim x 2 bytes (fp16 cache), per token.
    kv_kib_per_token: Annotated[float, Field(gt=0)]
    context_tokens: Annotated[int, Field(ge=128)] = 4096
    licence: str = ""
    # The packaged model (FORGE_LLM_MODEL's names) the LLM serves when the operator names none.
    packaged: str | None = None

    @property
    def weights_bytes(self) -> int:
        return int(self.weights_gib * GIB)

    def kv_bytes(self, sessions: int) -> int:
        return int(sessions * self.context_tokens * self.kv_kib_per_token * 1024)

    def need_bytes(self, sessions: int) -> int:
        return self.weights_bytes + self.kv_bytes(sessions)


class SkuProfile(_Strict):
    name: str = ""
    description: str = ""
    device: DeviceSpec
    isolation: Isolation = Isolation.SOFTWARE
    milvus: Literal["cpu", "gpu"] = "cpu"
    llm_engine: Literal["vllm", "llama_cpp"] = "vllm"
    buffer: Fraction = 0.0
    slices: Slices
    cpu_sets: CpuSets = CpuSets()
    admission: AdmissionConfig
    model: ModelSpec | None = None

    @model_validator(mode="after")
    def _plan_is_consistent(self) -> SkuProfile:
        total = sum(self.slices.of(s) for s in SERVICES_WITH_SLICES) + self.buffer
        if total > 1.0 + 1e-9:
            parts = " + ".join(f"{s} {self.slices.of(s):.2f}" for s in SERVICES_WITH_SLICES)
            raise ValueError(
                f"slices + buffer must be <= 1.0, got {parts} + buffer {self.buffer:.2f} = {total:.2f}"
            )
        if not self.device.has_gpu and any(self.slices.of(s) > 0 for s in SERVICES_WITH_SLICES):
            raise ValueError("device.memory_gib is 0 (no GPU), so every slice must be 0")
        if self.model is not None and self.slices.llm > 0:
            need, have = self.model.need_bytes(self.admission.max_sessions), self.slice_bytes("llm")
            if need > have:
                raise ValueError(
                    f"model {self.model.name} needs {need / GIB:.1f} GiB (weights "
                    f"{self.model.weights_gib:g} GiB + KV cache for {self.admission.max_sessions} "
                    f"sessions x {self.model.context_tokens} tokens), the llm slice is {have / GIB:.1f} GiB"
                )
        if self.milvus == "gpu" and self.slices.milvus == 0:
            raise ValueError("milvus: gpu needs slices.milvus > 0")
        if self.isolation == Isolation.MPS:
            if self.device.unified_memory:
                raise ValueError("isolation: mps is not available on unified-memory (Jetson) devices")
            cc = self.device.compute_capability
            if cc is None or float(cc) < MPS_MIN_COMPUTE_CAPABILITY:
                raise ValueError(
                    f"isolation: mps needs compute capability >= {MPS_MIN_COMPUTE_CAPABILITY}, "
                    f"device.compute_capability is {cc}"
                )
            on_gpu = [s for s in GPU_SERVICES if self.slices.of(s) > 0]
            reserve = len(on_gpu) * MPS_CONTEXT_RESERVE_BYTES
            buffer_bytes = int(self.buffer * self.device.memory_bytes)
            if reserve > buffer_bytes:
                raise ValueError(
                    f"isolation: mps limits each GPU service to its slice + "
                    f"{MPS_CONTEXT_RESERVE_BYTES // 1024**2} MiB for its CUDA context, so the buffer "
                    f"({buffer_bytes // 1024**2} MiB) must hold {len(on_gpu)} x "
                    f"{MPS_CONTEXT_RESERVE_BYTES // 1024**2} MiB ({', '.join(on_gpu)})"
                )
        return self

    def slice_bytes(self, service: str) -> int:
        return int(self.slices.of(service) * self.device.memory_bytes)


class ProfilesFile(_Strict):
    version: Literal[1]
    profiles: dict[str, SkuProfile]


def default_profiles_path() -> Path:
    """`FORGE_SKU_PROFILES`, else the copy packaged in the wheel, else the repo's deploy/ file."""
    if env_path := os.environ.get(PROFILES_FILE_ENV):
        return Path(env_path)
    packaged = resources.files("services.common") / "data" / "sku_profiles.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "deploy" / "sku_profiles.yaml"


def _format_validation_error(err: ValidationError, source: str) -> str:
    return f"invalid SKU profiles in {source}:\n" + "\n".join(
        f"  {line}" for line in validation_problems(err)
    )


def _apply_env_overrides(profile: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """FORGE_PROFILE__SLICES__LLM=0.8 sets profile["slices"]["llm"] = 0.8 (values parsed as YAML)."""
    merged: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in profile.items()}
    for key, raw in environ.items():
        if not key.startswith(ENV_OVERRIDE_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_OVERRIDE_PREFIX) :].split("__") if part]
        if not path:
            raise ConfigError(f"{key}: names no profile field")
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        try:
            node[path[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: cannot parse value {raw!r}: {exc}") from exc
    return merged


def load_profiles(path: Path | None = None) -> dict[str, SkuProfile]:
    """Every profile in the file, validated; a bad one anywhere is an error."""
    source = path or default_profiles_path()
    raw = _read_yaml(source)
    try:
        parsed = ProfilesFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(source))) from exc
    return {name: p.model_copy(update={"name": name}) for name, p in parsed.profiles.items()}


def load_profile(name: str, path: Path | None = None, environ: Mapping[str, str] | None = None) -> SkuProfile:
    """The named profile with environment overrides applied, validated after the overrides."""
    source = path or default_profiles_path()
    load_profiles(source)  # the whole file must be sound, not only the chosen profile
    raw = _read_yaml(source)
    profiles = raw.get("profiles") or {}
    if name not in profiles:
        raise ConfigError(f"unknown SKU profile {name!r} in {source}; known: {', '.join(sorted(profiles))}")
    overridden = _apply_env_overrides(profiles[name], os.environ if environ is None else environ)
    try:
        return SkuProfile.model_validate({**overridden, "name": name})
    except ValidationError as exc:
        raise ConfigError(
            _format_validation_error(exc, f"{source} [{name}] with environment overrides")
        ) from exc


def _read_yaml(source: Path) -> dict[str, Any]:
    data = read_yaml(source, "SKU profiles", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"SKU profiles {source} must be a mapping with 'version' and 'profiles'")
    return data
