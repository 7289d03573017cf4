"""API keys: the store the CLI writes, the ring the router reads, and the access rule."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.security.access import authorize, bearer_token
from services.common.security.keys import KEY_PATTERN, KeyRing, KeyStore, KeyStoreError, ensure_admin_key


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "keys" / "keys.yaml")


def test_a_created_key_resolves_to_its_tenant_and_only_its_hash_is_stored(store: KeyStore) -> None:
    key = store.create("acme")
    ring = KeyRing(store.path)
    principal = ring.resolve(key)
    assert principal is not None and principal.tenant == "acme" and principal.role == "tenant"
    text = store.path.read_text()
    # the secret is URL-safe base64 and may itself hold "_": take it by the key's own pattern
    match = KEY_PATTERN.fullmatch(key)
    assert match is not None
    assert key not in text and match.group(2) not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_wrong_malformed_and_foreign_keys_resolve_to_nobody(store: KeyStore) -> None:
    key = store.create("acme")
    ring = KeyRing(store.path)
    key_id, secret = key.split("_", 2)[1:]
    tampered = f"fk_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    for bad in (tampered, "", "fk_", "Bearer x", key + "x", "fk_00000000_" + secret, "x" * 100_000):
        assert ring.resolve(bad) is None, bad


def test_a_revoked_key_stops_resolving_once_the_ring_rechecks(store: KeyStore) -> None:
    key = store.create("acme")
    ring = KeyRing(store.path, recheck_s=0.0)
    assert ring.resolve(key) is not None
    store.revoke(key.split("_")[1])
    assert ring.resolve(key) is None
    assert [r.revoked is not None for r in store.records()] == [True]


def test_a_new_key_is_picked_up_without_a_new_ring(store: KeyStore) -> None:
    ring = KeyRing(store.path, recheck_s=0.0)  # the file does not exist yet
    key = store.create("beta", "admin")
    principal = ring.resolve(key)
    assert principal is not None and principal.is_admin


def test_a_corrupt_file_keeps_the_last_good_keys(store: KeyStore) -> None:
    key = store.create("acme")
    ring = KeyRing(store.path, recheck_s=0.0)
    store.path.write_text("keys: [this is: not: valid")
    assert ring.resolve(key) is not None


def test_bad_tenant_role_and_unknown_id_are_refused(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match="tenant must match"):
        store.create("no spaces allowed")
    with pytest.raises(KeyStoreError, match="role"):
        store.create("acme", "root")  # type: ignore[arg-type]
    with pytest.raises(KeyStoreError, match="no key with id"):
        store.revoke("deadbeef")


def test_the_admin_key_is_made_once_and_private(store: KeyStore, tmp_path: Path) -> None:
    admin_key = tmp_path / "keys" / "admin.key"
    assert ensure_admin_key(store, admin_key)
    assert not ensure_admin_key(store, admin_key)
    assert stat.S_IMODE(os.stat(admin_key).st_mode) == 0o600
    principal = KeyRing(store.path).resolve(admin_key.read_text().strip())
    assert principal is not None and principal.is_admin and principal.tenant == "default"


def test_the_access_rule(store: KeyStore) -> None:
    tenant_key, admin_key = store.create("acme"), store.create("ops", "admin")
    ring = KeyRing(store.path)
    assert authorize(ring, f"Bearer {tenant_key}", None, False).tenant == "acme"
    assert authorize(ring, f"bearer {tenant_key}", "acme", False).tenant == "acme"
    assert authorize(ring, f"Bearer {admin_key}", "acme", True).tenant == "acme"
    assert authorize(ring, f"Bearer {admin_key}", None, True).tenant == "ops"
    with pytest.raises(PermissionDenied, match="may not act for tenant 'other'"):
        authorize(ring, f"Bearer {tenant_key}", "other", False)
    with pytest.raises(PermissionDenied, match="needs an admin key"):
        authorize(ring, f"Bearer {tenant_key}", None, True)
    with pytest.raises(Unauthenticated, match="missing API key"):
        authorize(ring, None, "acme", False)
    with pytest.raises(Unauthenticated, match="missing API key"):
        authorize(ring, tenant_key, None, False)  # no "Bearer "
    with pytest.raises(Unauthenticated, match="not valid"):
        authorize(ring, "Bearer fk_00000000_" + "a" * 43, None, False)
    assert bearer_token("Basic abc") is None
