"""What each service serves with and dials with, from the security settings; certificate reload
keeps a broken new set out; GetInfo's Milvus URI carries no credentials."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from services.common.credentials import (
    ReloadingServerCertificate,
    SecurityError,
    dialer_for,
    server_security,
)
from services.common.security.settings import SecuritySettings
from services.common.security.tls import ensure_tls_dir
from services.router.app import redact_uri


def settings(home: Path, **values: str) -> SecuritySettings:
    return SecuritySettings(tls_dir=str(home / "tls"), **values)  # type: ignore[arg-type]


def test_secure_by_default(tmp_path: Path) -> None:
    ensure_tls_dir(tmp_path / "tls")
    router = server_security("router", settings(tmp_path), tmp_path)
    assert router.keys is not None and (router.transport, router.auth) == ("plaintext", "keys")
    embed = server_security("embed", settings(tmp_path), tmp_path)
    assert embed.certificate is not None and embed.certificate.client_ca is not None
    assert embed.transport == "mtls"
    assert dialer_for("router", settings(tmp_path), tmp_path).secure


def test_turning_security_off_is_said_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        router = server_security("router", settings(tmp_path, auth="off"), tmp_path)
        llm = server_security("llm", settings(tmp_path, internal_tls="off"), tmp_path)
    assert router.keys is None and router.auth == "off"
    assert llm.certificate is None and llm.transport == "plaintext"
    assert "API keys are OFF" in caplog.text and "mutual TLS is OFF" in caplog.text
    assert not dialer_for("router", settings(tmp_path, internal_tls="off"), tmp_path).secure


def test_missing_certificates_and_half_a_tls_pair_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="forge tls init"):
        server_security("guardrails", settings(tmp_path), tmp_path)
    with pytest.raises(SecurityError, match="forge tls init"):
        dialer_for("router", settings(tmp_path), tmp_path)
    with pytest.raises(SecurityError, match="both a certificate and a key"):
        server_security("router", settings(tmp_path, public_tls_cert="/x.crt"), tmp_path)


def test_a_mismatched_or_broken_new_certificate_keeps_the_current_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls, _ = ensure_tls_dir(tmp_path / "tls")
    with pytest.raises(ValueError, match="do not match"):
        ReloadingServerCertificate(tls.cert("llm"), tls.key("embed"), tls.ca_cert)
    certificate = ReloadingServerCertificate(tls.cert("llm"), tls.key("llm"), tls.ca_cert)
    assert certificate.fetch() is None  # nothing changed
    shutil.copy(tls.key("embed"), tls.key("llm"))  # half a rotation: the key of another pair
    with caplog.at_level(logging.ERROR):
        assert certificate.fetch() is None
    assert "cannot be used" in caplog.text
    ensure_tls_dir(tls.path, renew=True)  # a whole new pair
    assert certificate.fetch() is not None
    certificate.request_reload()  # SIGHUP: read again even though nothing changed
    assert certificate.fetch() is not None
    assert certificate.fetch() is None


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://root:Milvus@milvus:19530", "http://***@milvus:19530"),
        ("https://milvus.example:443/db?token=abc", "https://milvus.example:443/db?***"),
        ("http://milvus:19530", "http://milvus:19530"),
        ("/root/.forge/milvus/forge.db", "/root/.forge/milvus/forge.db"),
    ],
)
def test_get_info_shows_the_milvus_uri_without_credentials(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
