"""GPU tests run only where CUDA exists; everywhere else they are skipped, not failed.

Each test records its figures (card, slice, measured peak per service) with `record_figure`:
printed, and appended as JSON lines to $FORGE_GPU_FIGURES when set (tests/gpu/run_on_device.sh
sets it and prints the table)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.gpu.support import ENCODER_ONLY_POLICY, FIGURES_ENV, Figure, card, profile_for_card, service_env


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Callable[..., Figure]:
    def record(
        service: str, slice_bytes: int, peak_bytes: int, measured_by: str, isolation: str = "software"
    ) -> Figure:
        figure = Figure(
            request.node.name,
            card()[0],
            service,
            isolation,
            slice_bytes,
            peak_bytes,
            measured_by,
            peak_bytes <= slice_bytes,
        )
        line = json.dumps(figure.__dict__)
        print(f"\nGPU figure: {line}")
        if path := os.environ.get(FIGURES_ENV):
            with open(path, "a") as out:
                out.write(line + "\n")
        return figure

    return record


@pytest.fixture
def gpu_home(tmp_path: Path) -> Path:
    home = tmp_path / "forge-home"
    home.mkdir()
    (home / "policy.yaml").write_text(ENCODER_ONLY_POLICY)
    return home


@pytest.fixture
async def gpu_services(gpu_home: Path) -> AsyncIterator[dict[str, str]]:
    """embed and guardrails, each in its own process on the card's profile (software isolation):
    service name -> address."""
    from tests.helpers import ServiceProcess

    env = service_env(gpu_home, profile_for_card())
    processes = {name: ServiceProcess(name, env=env) for name in ("embed", "guardrails")}
    try:
        addresses = {}
        for name, process in processes.items():
            listening = await process.start()
            addresses[name] = f"127.0.0.1:{listening['port']}"
        for process in processes.values():
            await process.next_event("serving", timeout_s=300)
        yield addresses
    finally:
        for process in processes.values():
            await process.kill()
