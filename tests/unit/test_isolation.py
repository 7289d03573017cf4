"""Isolation modes: the environment `forge up` gives each service, and how each slice is held."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from services.cli.supervisor import ChildSpec, Supervisor
from services.common.config import ConfigError, SkuProfile, load_profile
from services.common.isolation import (
    MPS_LIMIT_ENV,
    MPS_LOG_ENV,
    MPS_PID_FILE,
    MPS_PIPE_ENV,
    enforcement,
    mps_daemon,
    mps_limit_value,
    mps_startup_warning,
    service_environment,
    torch_memory_cap,
)

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "sku_profiles.yaml"
MIB = 2**20


def profile(name: str, **overrides: str) -> SkuProfile:
    return load_profile(
        name, SHIPPED, environ={f"FORGE_PROFILE__{k.upper()}": v for k, v in overrides.items()}
    )


def test_mps_gives_each_gpu_service_its_pinned_limit_in_nvidia_syntax() -> None:
    h100 = profile("h100", isolation="mps")
    # slice + 1 GiB for the CUDA context, rounded down to MiB: embed 0.05 x 80 GiB = 4096 MiB.
    assert service_environment(h100, "embed", environ={}) == {MPS_LIMIT_ENV: "0=5120M"}
    assert service_environment(h100, "guardrails", environ={}) == {MPS_LIMIT_ENV: "0=5120M"}
    assert service_environment(h100, "llm", environ={}) == {MPS_LIMIT_ENV: f"0={61440 + 1024}M"}
    # The router never touches the GPU; a slice of 0 means the service computes on the CPU.
    assert service_environment(h100, "router", environ={}) == {}
    odd = profile("h100", isolation="mps", slices__embed="0.0123")
    assert mps_limit_value(odd, "embed") == f"0={(int(0.0123 * 80 * 2**30) + 1024 * MIB) // MIB}M"
    assert service_environment(odd, "embed", environ={})[MPS_LIMIT_ENV].endswith("M")


def test_mps_passes_the_operators_pipe_and_log_directories_through() -> None:
    h100 = profile("h100", isolation="mps")
    environ = {MPS_PIPE_ENV: "/run/mps/pipe", MPS_LOG_ENV: "/run/mps/log", "HOME": "/root"}
    assert service_environment(h100, "embed", environ=environ) == {
        MPS_LIMIT_ENV: "0=5120M",
        MPS_PIPE_ENV: "/run/mps/pipe",
        MPS_LOG_ENV: "/run/mps/log",
    }


@pytest.mark.parametrize("isolation", ["software", "none", "time_slicing"])
def test_other_modes_set_no_per_process_variable(isolation: str) -> None:
    h100 = profile("h100", isolation=isolation)
    environ = {MPS_PIPE_ENV: "/run/mps/pipe"}
    assert all(service_environment(h100, s, environ=environ) == {} for s in ("llm", "embed", "guardrails"))


def test_how_each_slice_is_enforced_per_mode() -> None:
    software = profile("h100")
    assert enforcement(software, "llm") == "vLLM gpu_memory_utilization 0.75"
    assert enforcement(software, "embed") == "torch memory fraction 0.05"
    assert enforcement(software, "milvus") == "CPU (Milvus on CPU)"
    assert torch_memory_cap(software, "embed") == 0.05
    mps = profile("h100", isolation="mps")
    assert enforcement(mps, "guardrails") == "torch memory fraction 0.05 + MPS pinned limit 0=5120M"
    none = profile("h100", isolation="none")
    assert torch_memory_cap(none, "embed") is None and enforcement(none, "embed") == "no cap (isolation none)"
    assert enforcement(none, "llm") == "vLLM gpu_memory_utilization 0.75"  # vLLM must be given a size
    p40 = profile("tesla_p40")
    assert (
        enforcement(p40, "llm").startswith("llama.cpp") and enforcement(p40, "embed") == "CPU (no GPU slice)"
    )
    assert torch_memory_cap(profile("cpu"), "embed") is None


def test_mps_needs_room_in_the_buffer_for_every_context_reserve() -> None:
    # h100: buffer 0.05 x 80 GiB = 4096 MiB holds 3 x 1024 MiB; 0.02 (1638 MiB) does not.
    with pytest.raises(
        ConfigError, match=r"buffer \(1638 MiB\) must hold 3 x 1024 MiB \(llm, embed, guardrails\)"
    ):
        profile("h100", isolation="mps", buffer="0.02")
    assert profile("h100", isolation="software", buffer="0.02").buffer == 0.02


def test_mps_daemon_is_found_by_its_pid_file_or_control_pipe(tmp_path: Path) -> None:
    missing = mps_daemon({MPS_PIPE_ENV: str(tmp_path / "nope")})
    assert (
        not missing.running
        and "does not exist" in missing.detail
        and "nvidia-cuda-mps-control -d" in missing.detail
    )
    pipe = tmp_path / "mps"
    pipe.mkdir()
    assert not mps_daemon({MPS_PIPE_ENV: str(pipe)}).running  # an empty directory: no daemon
    (pipe / MPS_PID_FILE).write_text(f"{os.getpid()}\n")
    assert mps_daemon({MPS_PIPE_ENV: str(pipe)}).running
    (pipe / MPS_PID_FILE).write_text("999999999\n")
    assert not mps_daemon({MPS_PIPE_ENV: str(pipe)}, proc=tmp_path).running  # stale pid
    (pipe / "control").write_text("")  # a daemon in another PID namespace: its pipe is visible
    assert mps_daemon({MPS_PIPE_ENV: str(pipe)}, proc=tmp_path).running


def test_forge_up_warns_when_mps_is_chosen_but_no_daemon_runs(tmp_path: Path) -> None:
    environ = {MPS_PIPE_ENV: str(tmp_path / "nope")}
    warning = mps_startup_warning(profile("h100", isolation="mps"), environ)
    assert warning is not None and "software caps only" in warning and MPS_LIMIT_ENV in warning
    assert mps_startup_warning(profile("h100"), environ) is None
    (tmp_path / "nope").mkdir()
    (tmp_path / "nope" / "control").write_text("")
    assert mps_startup_warning(profile("h100", isolation="mps"), environ) is None


class EnvDump(ChildSpec):
    """A child that writes its MPS variables to a file and exits, in place of a service."""

    def command(self) -> list[str]:
        code = (
            "import os, sys; open(sys.argv[1], 'w').write("
            "os.environ.get('CUDA_MPS_PINNED_DEVICE_MEM_LIMIT', '-') + ' ' + os.environ['FORGE_PROFILE'])"
        )
        return [sys.executable, "-c", code, str(Path(self.host) / f"{self.service}.env")]


async def test_supervisor_starts_each_service_with_its_own_environment(tmp_path: Path) -> None:
    h100 = profile("h100", isolation="mps")
    specs: list[ChildSpec] = [
        EnvDump(s, str(tmp_path), 0, 0, env=service_environment(h100, s, {})) for s in ("embed", "router")
    ]
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_MPS_")}
    supervisor = Supervisor(specs, {**inherited, "FORGE_PROFILE": "h100"})
    for child in supervisor.children:
        await supervisor._spawn(child)
        assert child.process is not None and await child.process.wait() == 0
    assert (tmp_path / "embed.env").read_text() == "0=5120M h100"
    assert (tmp_path / "router.env").read_text() == "- h100"


def test_guardrails_caps_its_allocator_unless_isolation_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.encoder import SentenceEncoder
    from services.guardrails import encoder

    capped: list[tuple[str, float]] = []
    monkeypatch.setattr(encoder, "choose_device", lambda service, requested, fraction: "cuda:0")
    monkeypatch.setattr(
        encoder, "apply_gpu_slice", lambda device, fraction: capped.append((device, fraction))
    )
    monkeypatch.setattr(SentenceEncoder, "load", lambda path, device: device)
    encoder.TextEncoder.load("auto", 0.05)
    assert capped == [("cuda:0", 0.05)]
    encoder.TextEncoder.load("auto", 0.05, cap_to_slice=False)
    assert capped == [("cuda:0", 0.05)]
