"""gRPC credentials from the mesh's security settings: what a service serves with (mutual TLS,
server TLS, plaintext; API keys on the router) and how it dials the others.

Server certificates are re-read for new connections when their files change or on SIGHUP, so
rotating a certificate needs no restart; connections already open keep the old one.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.common.channels import PLAINTEXT, Dialer
from services.common.reloading_channel import files_stamp
from services.common.security.keys import KeyRing
from services.common.security.settings import SecuritySettings
from services.common.security.tls import TlsDir

log = logging.getLogger(__name__)


class SecurityError(Exception):
    """Security settings that cannot be served (missing certificates, half a TLS pair)."""


def _check_pair(cert_pem: bytes, key_pem: bytes, where: Path) -> None:
    """A certificate and key that do not belong together would break every new handshake."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if cert.public_key().public_bytes(pem, public) != key.public_key().public_bytes(pem, public):
        raise ValueError(f"{where}: the certificate and the key do not match")


class ReloadingServerCertificate:
    """A server's certificate, key and (for mutual TLS) client CA, read again for new connections
    once a file changed or `request_reload()` was called. A broken new set is logged and the
    current one kept."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self._paths = [p for p in (cert, key, client_ca) if p is not None]
        self._lock = threading.Lock()
        self._forced = False
        self._stamp = files_stamp(self._paths)
        self.initial = self._read()

    def _read(self) -> grpc.ServerCertificateConfiguration:
        cert_pem, key_pem = self.cert.read_bytes(), self.key.read_bytes()
        _check_pair(cert_pem, key_pem, self.cert)
        ca_pem = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=ca_pem)

    def request_reload(self) -> None:
        self._forced = True

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC calls this before every new TLS handshake: None keeps the current certificate."""
        with self._lock:
            stamp = files_stamp(self._paths)
            if stamp == self._stamp and not self._forced:
                return None
            self._stamp, self._forced = stamp, False
            try:
                config = self._read()
            except (OSError, ValueError) as exc:
                log.error("TLS files changed but cannot be used (keeping the current ones): %s", exc)
                return None
            log.info("TLS certificate reloaded from %s", self.cert)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.initial,
            self.fetch,  # type: ignore[arg-type]  # the stubs miss that None means "no change"
            require_client_authentication=self.client_ca is not None,
        )


@dataclass(frozen=True)
class ServerSecurity:
    """How a server guards its port: TLS credentials (None = plaintext) and API keys (None =
    anyone may call; only the router's public port uses keys)."""

    certificate: ReloadingServerCertificate | None = None
    keys: KeyRing | None = None
    # What GetInfo shows an operator: "mtls", "tls", "plaintext"; "keys" or "off".
    transport: str = "plaintext"
    auth: str = "off"

    def credentials(self) -> grpc.ServerCredentials | None:
        return self.certificate.credentials() if self.certificate is not None else None

    def reload(self) -> None:
        if self.certificate is not None:
            self.certificate.request_reload()


def _tls_dir(settings: SecuritySettings, home: Path, identity: str) -> TlsDir:
    tls = TlsDir(settings.tls_path(home))
    missing = tls.missing([identity])
    if missing:
        raise SecurityError(
            f"mutual TLS is on but {', '.join(str(p) for p in missing)} is missing: run `forge tls init` "
            f"(forge up does it at first start) or set FORGE_INTERNAL_TLS=off"
        )
    return tls


def dialer_for(identity: str, settings: SecuritySettings, home: Path) -> Dialer:
    """How `identity` (a service, or "client" for operators' tools) reaches llm, embed and
    guardrails."""
    if settings.internal_tls == "off":
        return PLAINTEXT
    tls = _tls_dir(settings, home, identity)

    def credentials() -> grpc.ChannelCredentials:
        cert, key = tls.cert(identity).read_bytes(), tls.key(identity).read_bytes()
        _check_pair(cert, key, tls.cert(identity))
        return grpc.ssl_channel_credentials(
            root_certificates=tls.ca_cert.read_bytes(), private_key=key, certificate_chain=cert
        )

    watched = (tls.ca_cert, tls.cert(identity), tls.key(identity))
    return Dialer(credentials(), reload=credentials, watched=watched)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_security(service: str, settings: SecuritySettings, home: Path) -> ServerSecurity:
    """The router: its public port (server TLS when given a certificate) with API keys. Every
    other service: mutual TLS with the mesh's CA."""
    if service == "router":
        certificate = None
        if settings.public_tls_cert or settings.public_tls_key:
            if not (settings.public_tls_cert and settings.public_tls_key):
                raise SecurityError("public TLS needs both a certificate and a key (--tls-cert/--tls-key)")
            certificate = ReloadingServerCertificate(
                Path(settings.public_tls_cert).expanduser(), Path(settings.public_tls_key).expanduser(), None
            )
        keys = KeyRing(settings.keys_path(home)) if settings.auth == "keys" else None
        if keys is None:
            log.warning("API keys are OFF (FORGE_AUTH=off): any caller may act as any tenant")
        return ServerSecurity(certificate, keys, "tls" if certificate else "plaintext", settings.auth)
    if settings.internal_tls == "off":
        log.warning("mutual TLS is OFF (FORGE_INTERNAL_TLS=off): anyone who reaches this port may call it")
        return ServerSecurity(transport="plaintext")
    tls = _tls_dir(settings, home, service)
    return ServerSecurity(
        ReloadingServerCertificate(tls.cert(service), tls.key(service), tls.ca_cert), None, "mtls"
    )
