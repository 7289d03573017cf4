"""A service as a process (services.common.entrypoint): `python -m services.<name>` parses its own
command line (the CLI is not involved; .importlinter keeps services off the CLI), and start-up
errors read the same as under `forge serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.common.channels import Dialer
from services.common.config import SkuProfile
from services.common.entrypoint import ServeError, ServiceEntry, serve, serve_main, server_options
from services.common.server import ServiceApp
from services.common.settings import ForgeSettings
from tests.helpers import REPO_ROOT, mesh_tls


def refuse(profile: SkuProfile, home: Path, dialer: Dialer) -> ServiceApp:
    raise ValueError("max_batch_size: must be >= 1")


BROKEN = ServiceEntry("embed", refuse, "FORGE_EMBED_* settings")


@pytest.mark.parametrize("service", ["embed", "guardrails", "llm", "router"])
def test_python_m_service_has_the_serve_options(service: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"services.{service}", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: python -m services.{service}" in done.stdout
    for option in ("--host", "--port", "--metrics-port", "--grace"):
        assert option in done.stdout


def test_an_unknown_profile_stops_the_service(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="unknown SKU profile 'gtx_1080'"):
        serve(BROKEN, ForgeSettings(profile="gtx_1080", home=tmp_path), server_options("127.0.0.1", 0, -1, 1))


def test_invalid_settings_are_named(tmp_path: Path) -> None:
    mesh_tls(tmp_path)
    with pytest.raises(ServeError, match="invalid FORGE_EMBED_\\* settings:\nmax_batch_size"):
        serve(BROKEN, ForgeSettings(profile="cpu", home=tmp_path), server_options("127.0.0.1", 0, -1, 1))


def test_serve_main_reports_a_start_up_error_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORGE_HOME", str(tmp_path))
    monkeypatch.setenv("FORGE_PROFILE", "cpu")
    mesh_tls(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        serve_main(BROKEN, ["--port", "0", "--metrics-port", "-1"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.startswith("Error: invalid FORGE_EMBED_* settings:")


def test_a_negative_metrics_port_turns_metrics_off() -> None:
    assert server_options("0.0.0.0", 50053, -1, 30).metrics_port is None
    assert server_options("0.0.0.0", 50053, 0, 30).metrics_port == 0


def test_missing_certificates_stop_the_service_and_say_what_to_do(tmp_path: Path) -> None:
    missing = r"mutual TLS is on but .*ca\.crt.* is missing: run `forge tls init`"
    with pytest.raises(ServeError, match=missing):
        serve(BROKEN, ForgeSettings(profile="cpu", home=tmp_path), server_options("127.0.0.1", 0, -1, 1))
