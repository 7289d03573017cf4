"""API keys: who a caller is (a tenant, and whether an admin), decided by the key it presents.

A key is `fk_<id>_<secret>`: the id (8 hex digits) is public and names the key in `forge keys
list`/`revoke`; the secret is 32 random bytes. Only the SHA-256 of the whole key is stored. A
slow password hash would add nothing here (the secret is random, not chosen by a person) and
would cost milliseconds per call.

The store is one YAML file. Writers (the CLI) replace it atomically under a lock; readers (the
router) re-read it when it changes, so a new or revoked key takes effect within `recheck_s`
without a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal

import yaml

log = logging.getLogger(__name__)

Role = Literal["tenant", "admin"]
ROLES: Final = ("tenant", "admin")
KEY_PATTERN: Final = re.compile(r"fk_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
# The same rule the router applies to the x-forge-tenant header.
TENANT_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")
# A revoked key stops working within this (the contract says 5 s).
RECHECK_S: Final = 1.0


class KeyStoreError(ValueError):
    """A key operation that cannot be done (unknown id, bad tenant name, corrupt store)."""


@dataclass(frozen=True)
class KeyRecord:
    id: str
    tenant: str
    role: Role
    sha256: str
    created: str
    revoked: str | None = None


@dataclass(frozen=True)
class Principal:
    """The caller a valid key stands for."""

    key_id: str
    tenant: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _parse(text: str, path: Path) -> dict[str, KeyRecord]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("keys", []), list):
        raise KeyStoreError(f"{path}: expected a mapping with a 'keys' list")
    records: dict[str, KeyRecord] = {}
    for item in data.get("keys", []):
        try:
            record = KeyRecord(**item)
        except TypeError as exc:
            raise KeyStoreError(f"{path}: bad key entry {item!r}: {exc}") from exc
        if record.role not in ROLES:
            raise KeyStoreError(f"{path}: key {record.id} has unknown role {record.role!r}")
        records[record.id] = record
    return records


class KeyStore:
    """The key file, for the CLI: create, list, revoke."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def records(self) -> list[KeyRecord]:
        if not self.path.exists():
            return []
        return list(_parse(self.path.read_text(), self.path).values())

    def _write(self, records: list[KeyRecord]) -> None:
        text = yaml.safe_dump({"keys": [asdict(r) for r in records]}, sort_keys=False)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def create(self, tenant: str, role: Role = "tenant") -> str:
        """A new key for `tenant`; returns the key itself, which is stored nowhere."""
        if not TENANT_PATTERN.fullmatch(tenant):
            raise KeyStoreError(f"tenant must match {TENANT_PATTERN.pattern}, got {tenant[:64]!r}")
        if role not in ROLES:
            raise KeyStoreError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        with self._locked():
            records = self.records()
            taken = {r.id for r in records}
            key_id = secrets.token_hex(4)
            while key_id in taken:
                key_id = secrets.token_hex(4)
            key = f"fk_{key_id}_{secrets.token_urlsafe(32)}"
            records.append(KeyRecord(key_id, tenant, role, digest(key), _now()))
            self._write(records)
        return key

    def revoke(self, key_id: str) -> KeyRecord:
        with self._locked():
            records = self.records()
            for i, record in enumerate(records):
                if record.id == key_id:
                    if record.revoked is None:
                        records[i] = KeyRecord(**{**asdict(record), "revoked": _now()})
                        self._write(records)
                    return records[i]
        raise KeyStoreError(f"no key with id {key_id!r} in {self.path}")


class KeyRing:
    """The router's view of the key file: resolves a presented key to its principal, re-reading
    the file at most every `recheck_s` when it changed. A file that goes missing or turns
    unreadable keeps the last good keys and logs why (a half-written Secret must not lock every
    caller out); a missing file at start means no key is valid."""

    def __init__(self, path: Path, recheck_s: float = RECHECK_S) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._records: dict[str, KeyRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self._reload()
        if not self.path.exists():
            log.warning("no API key file at %s: every call will be refused until keys are created", path)

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            records = _parse(self.path.read_text(), self.path)
        except (OSError, yaml.YAMLError, KeyStoreError) as exc:
            log.error("cannot read API keys from %s (keeping the previous ones): %s", self.path, exc)
            return
        self._records, self._stamp = records, stamp
        log.info("API keys loaded from %s: %d active", self.path, self.active_count)

    @property
    def active_count(self) -> int:
        return sum(1 for r in self._records.values() if r.revoked is None)

    def resolve(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key; None for anything else."""
        now = time.monotonic()
        if now - self._checked >= self.recheck_s:
            with self._lock:
                if now - self._checked >= self.recheck_s:
                    self._reload()
                    self._checked = now
        match = KEY_PATTERN.fullmatch(key)
        if match is None:
            return None
        record = self._records.get(match.group(1))
        if record is None:  # maybe a key made a moment ago: a stat is cheap, look again now
            with self._lock:
                self._reload()
            record = self._records.get(match.group(1))
        if record is None or record.revoked is not None:
            return None
        if not hmac.compare_digest(record.sha256, digest(key)):
            return None
        return Principal(record.id, record.tenant, record.role)


def write_secret_file(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (created 0600, never briefly wider)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure_admin_key(store: KeyStore, admin_key: Path) -> bool:
    """At first start: an admin key (tenant "default") in the store and in `admin_key` (0600).
    Returns True when it made one."""
    if admin_key.exists():
        return False
    key = store.create("default", "admin")
    write_secret_file(admin_key, key + "\n")
    return True
