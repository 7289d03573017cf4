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
