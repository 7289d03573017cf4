"""Who may do what on the router: the rule, free of gRPC.

The key decides the tenant. A caller may name a tenant (x-forge-tenant) only if it is its own,
unless it holds an admin key; admin-only services need an admin key.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.security.keys import KeyRing, Principal

BEARER = "bearer "
# The metadata header naming the tenant a call acts for (its own, or any with an admin key).
TENANT_HEADER = "x-forge-tenant"


@dataclass(frozen=True)
class Caller:
    """Who a call is from, as the auth layer settled it."""

    tenant: str
    principal: Principal | None  # None when auth is off


# Set by the auth layer for the duration of each call it let through.
CURRENT_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("forge_caller", default=None)


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None or authorization[: len(BEARER)].lower() != BEARER:
        return None
    return authorization[len(BEARER) :].strip()


def authorize(
    keys: KeyRing, authorization: str | None, requested_tenant: str | None, admin_only: bool
) -> Caller:
    """The caller of a call carrying these headers, or Unauthenticated / PermissionDenied."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthenticated("missing API key: send the header 'authorization: Bearer <key>'")
    principal = keys.resolve(token)
    if principal is None:
        raise Unauthenticated("API key not valid (unknown, malformed or revoked)")
    if admin_only and not principal.is_admin:
        raise PermissionDenied(f"key {principal.key_id} is a tenant key; this call needs an admin key")
    if requested_tenant is None or requested_tenant == principal.tenant:
        return Caller(principal.tenant, principal)
    if principal.is_admin:
        return Caller(requested_tenant, principal)
    raise PermissionDenied(
        f"key {principal.key_id} belongs to tenant {principal.tenant!r}; it may not act for "
        f"tenant {requested_tenant[:64]!r}"
    )
