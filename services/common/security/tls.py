"""The mesh's private CA and one certificate per service (and one for operators), made with
`cryptography` at first start.

Services verify each other by name, not address: a service certificate names the service
(`llm`, `forge-llm`) plus localhost, and the router dials with that name as the TLS target, so the
same files work on loopback, in compose (hosts `llm`, `embed`, ...) and in Kubernetes.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES: Final = ("router", "llm", "embed", "guardrails", "gateway")
# Operators' certificate for grpcurl and `forge up`'s health checks.
CLIENT: Final = "client"
IDENTITIES: Final = (*SERVICES, CLIENT)
CA_DAYS: Final = 3650
CERT_DAYS: Final = 825  # the longest lifetime common clients accept for a leaf certificate
LOCAL_SANS: Final = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsDir:
    """Where the PEM files are: ca.crt, ca.key and <identity>.crt/.key."""

    path: Path

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    def cert(self, identity: str) -> Path:
        return self.path / f"{identity}.crt"

    def key(self, identity: str) -> Path:
        return self.path / f"{identity}.key"

    def missing(self, identities: Iterable[str] = IDENTITIES) -> list[Path]:
        wanted = [self.ca_cert, *(p for i in identities for p in (self.cert(i), self.key(i)))]
        return [p for p in wanted if not p.exists()]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a reader (a server reloading) never sees half a file


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _names(identity: str, extra_sans: Sequence[str]) -> list[str]:
    own = [identity, f"forge-{identity}"] if identity in SERVICES else [identity]
    return list(dict.fromkeys([*own, *LOCAL_SANS, *extra_sans]))


def _make_ca(tls: TlsDir) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Forge mesh CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(tls.ca_key, _key_pem(key), private=True)
    _write(tls.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, key


def _load_ca(tls: TlsDir) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    # ca.crt may hold two CAs while one is being rotated; the first one signs.
    cert = x509.load_pem_x509_certificates(tls.ca_cert.read_bytes())[0]
    key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{tls.ca_key}: expected an EC private key")
    return cert, key


def issue(
    tls: TlsDir,
    identity: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    extra_sans: Sequence[str] = (),
    days: int = CERT_DAYS,
) -> None:
    """A certificate for `identity` signed by the CA, usable as both server and client (the
    guardrails judge and the router are clients of other services)."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in _names(identity, extra_sans)]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(tls.key(identity), _key_pem(key), private=True)
    _write(tls.cert(identity), cert.public_bytes(serialization.Encoding.PEM), private=False)


def ensure_tls_dir(
    path: Path, extra_sans: Sequence[str] = (), renew: bool = False
) -> tuple[TlsDir, list[str]]:
    """The CA and every identity's certificate under `path`, making what is missing (or, with
    `renew`, re-issuing every leaf certificate from the existing CA). Returns the directory and
    the identities it issued."""
    tls = TlsDir(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    new_ca = not (tls.ca_cert.exists() and tls.ca_key.exists())
    ca = _make_ca(tls) if new_ca else _load_ca(tls)
    issued = []
    for identity in IDENTITIES:
        if renew or new_ca or tls.missing([identity]):
            issue(tls, identity, ca, extra_sans)
            issued.append(identity)
    return tls, issued
