"""Which errors of the embedding model mean it cannot serve again in this process.

On a GPU, a CUDA error other than out of memory (an illegal memory access, a device-side assert,
a lost device, an ECC error) is sticky: it poisons the process's CUDA context, and every later
model call fails the same way until the process is replaced. Out of memory concerns one batch
(RESOURCE_EXHAUSTED, services/common/encoder.py). On a CPU no model error is sticky: a failed batch
fails its own calls and the next batch runs, so nothing there is fatal.
"""

from __future__ import annotations

from services.common.errors import ForgeError

# How PyTorch words the sticky errors (torch < 2.8 raises them as plain RuntimeError).
_STICKY = ("CUDA error", "CUBLAS_STATUS_", "CUDNN_STATUS_", "cuDNN error", "device-side assert")


def model_died(exc: BaseException) -> bool:
    if isinstance(exc, ForgeError) or "out of memory" in str(exc).lower():
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - the service always has torch
        return False
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)  # torch >= 2.8
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _STICKY)
