"""Where a service's torch model runs, and holding that process to its GPU slice (the services
that compute with torch: embed, guardrails)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def choose_device(service: str, requested: str, slice_fraction: float) -> str:
    """cuda:0 only when asked for (or auto) and the profile gives `service` a GPU slice.
    `requested` is the service's FORGE_<SERVICE>_DEVICE setting: auto, cpu or cuda."""
    if requested == "cpu":
        return "cpu"
    import torch

    setting = f"FORGE_{service.upper()}_DEVICE"
    if not torch.cuda.is_available():
        if requested == "cuda":
            raise RuntimeError(f"{setting}=cuda but CUDA is not available")
        return "cpu"
    if slice_fraction <= 0:
        if requested == "cuda":
            raise RuntimeError(f"{setting}=cuda but the profile's {service} slice is 0")
        return "cpu"
    return "cuda:0"


def apply_gpu_slice(device: str, slice_fraction: float) -> None:
    """Cap this process's CUDA caching allocator at its slice; an allocation beyond it raises
    OutOfMemoryError in this process only."""
    if not device.startswith("cuda"):
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(slice_fraction, torch.device(device))
    log.info("GPU slice on %s: %.0f%% of device memory", device, slice_fraction * 100)
