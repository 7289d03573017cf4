"""Packaged models: a chunked GGUF is joined once, in order, checked against its pinned SHA-256
(a wrong chunk is refused and nothing is left behind), and a missing package says what to install.
The chunk packages here are real packages on sys.path holding small files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.llm import packaged_models
from services.llm.packaged_models import ModelUnavailable, PackagedModel, gguf_path, lookup

PARTS = (b"GGUF-first-part|", b"second-part|", b"third")


def chunk_packages(root: Path, prefix: str, parts: tuple[bytes, ...]) -> tuple[str, ...]:
    names = []
    for i, data in enumerate(parts, start=1):
        package = root / f"{prefix}{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(data)
        names.append(package.name)
    return tuple(names)


def model_of(packages: tuple[str, ...], whole: bytes) -> PackagedModel:
    return PackagedModel(
        "test-model",
        "Test Model Q4",
        "Apache-2.0",
        tuple(f"{p}==1.0" for p in packages),
        "test-model.gguf",
        packages,
        hashlib.sha256(whole).hexdigest(),
        len(whole),
    )


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    return chunk_packages(site, "forge_test_chunk_part", PARTS)


def test_chunks_are_joined_in_order_once(packages: tuple[str, ...], tmp_path: Path) -> None:
    model = model_of(packages, b"".join(PARTS))
    said: list[str] = []
    path = gguf_path(model, tmp_path / "models", progress=said.append)
    assert path.read_bytes() == b"".join(PARTS)
    assert len(said) == 1 and "joining 3 packaged chunks" in said[0]
    again: list[str] = []
    assert gguf_path(model, tmp_path / "models", progress=again.append) == path
    assert again == [], "a joined, checked file is not joined again"


def test_a_chunk_that_does_not_hash_to_the_pin_is_refused(packages: tuple[str, ...], tmp_path: Path) -> None:
    model = model_of(packages, b"".join(PARTS[::-1]))  # the pin of another order
    with pytest.raises(ModelUnavailable, match="not the pinned"):
        gguf_path(model, tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == [], "no half-written or unchecked file is left"


def test_a_file_changed_after_joining_is_joined_again(packages: tuple[str, ...], tmp_path: Path) -> None:
    model = model_of(packages, b"".join(PARTS))
    path = gguf_path(model, tmp_path / "models")
    path.write_bytes(b"truncated")
    assert gguf_path(model, tmp_path / "models").read_bytes() == b"".join(PARTS)


def test_a_missing_package_names_what_to_install(tmp_path: Path) -> None:
    model = model_of(("forge_test_absent_part1", "forge_test_absent_part2"), b"x")
    with pytest.raises(ModelUnavailable, match=r"forge_test_absent_part1 is not installed \(pip install "):
        gguf_path(model, tmp_path / "models")


def test_names_aliases_and_unknown_names() -> None:
    assert lookup("tiny") is lookup("smollm2-135m")
    assert lookup(packaged_models.DEFAULT_MODEL).name == "qwen2.5-coder-0.5b"
    with pytest.raises(ModelUnavailable, match=r"unknown packaged model 'gpt-5'.*qwen2\.5-coder-0\.5b"):
        lookup("gpt-5")


def test_the_default_model_is_installed_and_joins_to_its_pin(tmp_path: Path) -> None:
    """The real six chunk packages `make up` installs (the llamacpp extra)."""
    model = lookup(packaged_models.DEFAULT_MODEL)
    path = gguf_path(model, tmp_path / "models")
    assert path.stat().st_size == model.size
    assert path.read_bytes()[:4] == b"GGUF"
