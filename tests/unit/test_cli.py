from __future__ import annotations

from click.testing import CliRunner

from services.cli.main import cli
from services.common.config import GIB


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env or {}, catch_exceptions=False)
    return result.exit_code, result.output


def test_plan_prints_slices_in_bytes() -> None:
    code, out = run("plan", "--sku", "tesla_p40")
    assert code == 0
    assert str(int(0.85 * 24 * GIB)) in out
    assert "llama_cpp" in out and "max 10" in out and "buffer" in out


def test_plan_shows_the_profiles_model_against_the_llm_slice() -> None:
    code, out = run("plan", "--sku", "tesla_p40")
    assert code == 0
    assert "model        Qwen2.5-7B-Instruct (q4_k_m, llama_cpp, Apache-2.0)" in out
    assert "10 sessions x 4096 tokens x 56 KiB" in out
    assert "6.55 GiB  of the llm slice's 20.40 GiB: fits" in out
    code, out = run("plan", "--sku", "cpu")
    assert "Qwen2.5-Coder-0.5B-Instruct (q4_k_m, llama_cpp" in out and "of CPU memory" in out


def test_plan_defaults_to_the_selected_profile() -> None:
    code, out = run("--profile", "rtx_pro_4000", "plan")
    assert code == 0 and "rtx_pro_4000" in out and "max 8" in out


def test_plan_all_validates_every_profile() -> None:
    code, out = run("plan", "--all")
    assert code == 0
    for name in ("cpu", "tesla_p40", "rtx_pro_4000", "jetson_thor", "h100"):
        assert f"profile      {name}:" in out


def test_plan_rejects_an_overcommitted_override_clearly() -> None:
    code, out = run("plan", "--sku", "h100", env={"FORGE_PROFILE__SLICES__LLM": "0.95"})
    assert code == 1
    assert "slices + buffer must be <= 1.0" in out and "1.10" in out


def test_unknown_sku_is_a_clear_error() -> None:
    code, out = run("plan", "--sku", "gtx_1080")
    assert code == 1 and "unknown SKU profile 'gtx_1080'" in out


def test_plan_says_how_each_slice_is_enforced() -> None:
    code, out = run("plan", "--sku", "h100")
    assert code == 0 and "isolation    software: each service caps itself" in out
    assert "llm         vLLM gpu_memory_utilization 0.75" in out
    assert "embed       torch memory fraction 0.05" in out
    assert "MPS pinned limit" not in out


def test_plan_under_mps_prints_each_services_pinned_limit() -> None:
    code, out = run("plan", "--sku", "h100", env={"FORGE_PROFILE__ISOLATION": "mps"})
    assert code == 0 and "enforced by (isolation mps)" in out
    assert "embed       torch memory fraction 0.05 + MPS pinned limit 0=5120M" in out
    assert "llm         vLLM gpu_memory_utilization 0.75 + MPS pinned limit 0=62464M" in out
    assert "nvidia-cuda-mps-control -d" in out


def test_plan_refuses_mps_where_the_seed_says_it_cannot_run() -> None:
    code, out = run("plan", "--sku", "tesla_p40", env={"FORGE_PROFILE__ISOLATION": "mps"})
    assert code == 1 and "mps needs compute capability >= 7.0" in out
    code, out = run("plan", "--sku", "jetson_thor", env={"FORGE_PROFILE__ISOLATION": "mps"})
    assert code == 1 and "not available on unified-memory" in out
