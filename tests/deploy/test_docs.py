"""docs/operations.md answers "which isolation do I use on my box" for every profile, and its
table says what deploy/sku_profiles.yaml says (and names files that exist)."""

from __future__ import annotations

import re

from tests.deploy.conftest import DEPLOY, REPO, mps_profiles, profiles

DOC = REPO / "docs" / "operations.md"


def isolation_rows() -> dict[str, list[str]]:
    text = DOC.read_text()
    section = text.split("## Which isolation do I use on my box?", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \|", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def test_every_profile_has_a_row_with_its_isolation() -> None:
    rows = isolation_rows()
    assert set(rows) == set(profiles())
    for name, profile in profiles().items():
        assert rows[name][2] == f"`{profile.isolation.value}`", name


def test_the_table_names_the_right_files() -> None:
    rows = isolation_rows()
    for name in profiles():
        compose, cluster = rows[name][3], rows[name][4]
        assert f"overlay `{name}`" in cluster
        assert (DEPLOY / "k8s" / "overlays" / name / "kustomization.yaml").is_file()
        if name == "cpu":
            assert "docker-compose.cpu.yaml" in compose
        else:
            assert f"compose/{name}.yaml" in compose
        # An MPS variant is offered exactly where one is generated.
        assert (f"compose/{name}.mps.yaml" in compose) == (name in mps_profiles()), name


def test_documented_paths_exist() -> None:
    for path in re.findall(r"`((?:deploy|tools|docs)/[\w./-]+)`", DOC.read_text()):
        if "<" in path:
            continue
        assert (REPO / path).exists(), path
