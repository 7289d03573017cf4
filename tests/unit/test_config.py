from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.common.config import (
    GIB,
    SERVICES_WITH_SLICES,
    ConfigError,
    Isolation,
    load_profile,
    load_profiles,
)

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "sku_profiles.yaml"


def write_profiles(tmp_path: Path, profiles: dict[str, object]) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "profiles": profiles}))
    return path


def good_profile(**changes: object) -> dict[str, object]:
    profile: dict[str, object] = {
        "device": {"name": "Test GPU", "memory_gib": 24, "compute_capability": "8.0"},
        "buffer": 0.1,
        "slices": {"llm": 0.7, "embed": 0.1, "guardrails": 0.1},
        "admission": {"max_sessions": 4},
    }
    profile.update(changes)
    return profile


def test_shipped_profiles_follow_the_seed() -> None:
    profiles = load_profiles(SHIPPED)
    assert {"cpu", "tesla_p40", "rtx_pro_4000", "jetson_thor", "h100"} <= set(profiles)
    expected = {"tesla_p40": (0.85, 10), "rtx_pro_4000": (0.85, 8), "jetson_thor": (0.70, 20)}
    for name, (llm_slice, sessions) in expected.items():
        assert profiles[name].slices.llm == llm_slice
        assert profiles[name].admission.max_sessions == sessions
    assert profiles["tesla_p40"].llm_engine == "llama_cpp"  # Pascal: vLLM needs compute capability 7.0
    assert profiles["jetson_thor"].device.unified_memory
    for profile in profiles.values():
        total = sum(profile.slices.of(s) for s in SERVICES_WITH_SLICES) + profile.buffer
        assert total <= 1.0
        assert profile.milvus == "cpu"  # the seed's recommendation on every edge SKU


def test_cpu_profile_puts_nothing_on_a_gpu() -> None:
    cpu = load_profile("cpu", SHIPPED, environ={})
    assert not cpu.device.has_gpu
    assert all(cpu.slice_bytes(s) == 0 for s in SERVICES_WITH_SLICES)


def test_slice_bytes_use_device_memory() -> None:
    thor = load_profile("jetson_thor", SHIPPED, environ={})
    assert thor.slice_bytes("llm") == int(0.70 * 128 * GIB)
    assert thor.slice_bytes("router") == 0


def test_over_committed_plan_is_rejected_with_the_sum(tmp_path: Path) -> None:
    path = write_profiles(tmp_path, {"big": good_profile(buffer=0.2)})
    with pytest.raises(ConfigError, match=r"slices \+ buffer must be <= 1.0.*= 1.10"):
        load_profiles(path)


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (good_profile(colour="red"), r"big.colour: Extra inputs are not permitted"),
        (good_profile(slices={"llm": 0.5, "vision": 0.1}), r"big.slices.vision: Extra inputs"),
        (good_profile(slices={"llm": 1.5}), r"big.slices.llm: Input should be less than or equal to 1"),
        (good_profile(admission={"max_sessions": 0}), r"big.admission.max_sessions: Input should be greater"),
        (good_profile(admission={"max_sessions": "many"}), r"big.admission.max_sessions: .*integer"),
        (good_profile(isolation="magic"), r"big.isolation: Input should be 'none', 'software'"),
        (good_profile(device={"name": "x", "memory_gib": 0}), r"no GPU\), so every slice must be 0"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, profile: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_profiles(write_profiles(tmp_path, {"big": profile}))


def test_mps_needs_volta_or_newer_and_no_unified_memory(tmp_path: Path) -> None:
    pascal = good_profile(
        isolation="mps", device={"name": "P40", "memory_gib": 24, "compute_capability": "6.1"}
    )
    with pytest.raises(ConfigError, match=r"mps needs compute capability >= 7\.0"):
        load_profiles(write_profiles(tmp_path, {"p": pascal}))
    thor = good_profile(
        isolation="mps",
        device={"name": "Thor", "memory_gib": 128, "unified_memory": True, "compute_capability": "11.0"},
    )
    with pytest.raises(ConfigError, match="not available on unified-memory"):
        load_profiles(write_profiles(tmp_path, {"t": thor}))
    assert (
        load_profile("h100", SHIPPED, environ={"FORGE_PROFILE__ISOLATION": "mps"}).isolation == Isolation.MPS
    )


def test_env_overrides_apply_to_the_selected_profile_and_are_validated() -> None:
    env = {"FORGE_PROFILE__ADMISSION__MAX_SESSIONS": "12", "FORGE_PROFILE__SLICES__LLM": "0.8"}
    profile = load_profile("h100", SHIPPED, environ=env)
    assert profile.admission.max_sessions == 12
    assert profile.slices.llm == 0.8
    with pytest.raises(ConfigError, match=r"slices \+ buffer must be <= 1.0"):
        load_profile("h100", SHIPPED, environ={"FORGE_PROFILE__SLICES__LLM": "0.9"})
    with pytest.raises(ConfigError, match=r"slices\.gpu_for_fun: Extra inputs"):
        load_profile("h100", SHIPPED, environ={"FORGE_PROFILE__SLICES__GPU_FOR_FUN": "0.1"})


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown SKU profile 'a100'.*known: cpu, h100"):
        load_profile("a100", SHIPPED, environ={})


def test_a_bad_profile_anywhere_in_the_file_is_an_error(tmp_path: Path) -> None:
    path = write_profiles(tmp_path, {"ok": good_profile(), "bad": good_profile(buffer=0.5)})
    with pytest.raises(ConfigError, match=r"profiles.bad"):
        load_profile("ok", path, environ={})


def test_unreadable_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read SKU profiles"):
        load_profiles(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_profiles(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("profiles: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profiles(tmp_path / "broken.yaml")
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump({"version": 2, "profiles": {}}))
    with pytest.raises(ConfigError, match="version: Input should be 1"):
        load_profiles(tmp_path / "v2.yaml")


def test_every_shipped_profile_names_a_model_that_fits_its_llm_slice() -> None:
    for name, profile in load_profiles(SHIPPED).items():
        assert profile.model is not None, name
        need = profile.model.need_bytes(profile.admission.max_sessions)
        if profile.slices.llm > 0:
            assert need <= profile.slice_bytes("llm"), name
    p40 = load_profile("tesla_p40", SHIPPED, environ={})
    assert p40.model is not None and p40.model.quantization == "q4_k_m" and p40.llm_engine == "llama_cpp"


def test_a_model_too_big_for_the_slice_or_the_sessions_is_refused(tmp_path: Path) -> None:
    model = {"name": "Big-70B", "quantization": "fp8", "weights_gib": 15, "kv_kib_per_token": 320}
    # 24 GiB x 0.7 = 16.8 GiB: 15 GiB of weights + 4 x 4096 tokens x 320 KiB (5 GiB) do not fit.
    with pytest.raises(ConfigError, match=r"model Big-70B needs 20.0 GiB .* the llm slice is 16.8 GiB"):
        load_profiles(write_profiles(tmp_path, {"t": good_profile(model=model)}))
    fits = load_profiles(write_profiles(tmp_path, {"t": good_profile(model={**model, "weights_gib": 10})}))
    assert fits["t"].model is not None and fits["t"].model.kv_bytes(4) == 5 * GIB
    # More sessions than the memory holds, asked for from the environment, is refused too.
    with pytest.raises(ConfigError, match=r"model Qwen2\.5-32B-Instruct-AWQ needs"):
        load_profile("h100", SHIPPED, environ={"FORGE_PROFILE__ADMISSION__MAX_SESSIONS": "64"})
