"""The shared admission ledger: session leases of every router replica, in Redis.

Design (issue 14). A running Chat session is a *lease*: a member of the sorted set `leases` whose
score is its expiry time in Redis' own clock (ms), and of the tenant's sorted set `tenant:<name>`.
- claim: one Lua script drops expired leases, counts, and adds the lease only when the global
  limit and the tenant's quota both have room. Atomic on the server: two replicas can never both
  take the last slot.
- renew: every holder re-scores its leases (`ttl` ahead) every ttl/3, re-adding any that went
  missing (a Redis restarted empty, or a replica stalled past its TTL: the session is still
  running, so it is counted again), and refreshes its own entry in `replicas`.
- release: removes the lease from both sets.
A replica that dies stops renewing: its leases expire within the TTL and are dropped by the next
claim. Times come from Redis (`TIME`), so replicas' clocks never matter.

All keys share one hash tag (`{prefix}`), so the scripts also run on a Redis Cluster shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

GRANTED = 0
NO_SLOT = 1
NO_TENANT_SLOT = 2

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: leases, tenant set. ARGV: lease id, global limit, tenant quota (0 = none), ttl ms.
_CLAIM = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local active = redis.call('ZCARD', KEYS[1])
local tenant_active = redis.call('ZCARD', KEYS[2])
local quota = tonumber(ARGV[3])
if quota > 0 and tenant_active >= quota then return {2, active, tenant_active} end
if active >= tonumber(ARGV[2]) then return {1, active, tenant_active} end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[2], ttl * 2)
return {0, active + 1, tenant_active + 1}
"""
)

# KEYS: leases, replicas, then one tenant set per lease. ARGV: ttl ms, replica id, then lease ids.
_RENEW = (
    _NOW_MS
    + """
local ttl = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  redis.call('ZADD', KEYS[i], now + ttl, ARGV[i])
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}
"""
)


class LedgerUnavailable(Exception):
    """Redis did not answer (down, unreachable, stopped, or slower than the call's timeout)."""


@dataclass(frozen=True)
class Claim:
    outcome: int  # GRANTED, NO_SLOT or NO_TENANT_SLOT
    active: int  # leases held across all replicas after the claim
    tenant_active: int

    @property
    def granted(self) -> bool:
        return self.outcome == GRANTED


@dataclass(frozen=True)
class Renewal:
    active: int  # leases held across all replicas
    replicas: int  # replicas that renewed within the TTL (this one included)


class RedisLedger:
    """Leases in one Redis database. Every call is bounded by `timeout_s` (connect and reply)."""

    def __init__(self, url: str, key_prefix: str, ttl_s: float, timeout_s: float) -> None:
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a broken connection (a pooled one Redis closed when it
            # restarted); never redis-py's default of 10 with backoff, which would hold a Chat for
            # seconds while Redis is down instead of falling back at once.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._ttl_ms = max(1, round(ttl_s * 1000))
        tag = "{" + key_prefix + "}"
        self._leases_key = f"{tag}:leases"
        self._replicas_key = f"{tag}:replicas"
        self._tenant_prefix = f"{tag}:tenant:"
        self._claim = self._client.register_script(_CLAIM)
        self._renew = self._client.register_script(_RENEW)

    def _tenant_key(self, tenant: str) -> str:
        return self._tenant_prefix + tenant

    async def claim(self, lease: str, tenant: str, max_sessions: int, tenant_quota: int) -> Claim:
        keys = [self._leases_key, self._tenant_key(tenant)]
        args: list[str | int] = [lease, max_sessions, tenant_quota, self._ttl_ms]
        try:
            outcome, active, tenant_active = await self._claim(keys=keys, args=args)
        except (RedisError, OSError) as e:
            raise LedgerUnavailable(str(e) or type(e).__name__) from e
        return Claim(int(outcome), int(active), int(tenant_active))

    async def renew(self, replica: str, leases: Sequence[tuple[str, str]]) -> Renewal:
        """Re-score (or re-add) `leases` (lease id, tenant) and this replica's heartbeat."""
        keys = [self._leases_key, self._replicas_key, *(self._tenant_key(t) for _, t in leases)]
        args: list[str | int] = [self._ttl_ms, replica, *(lease for lease, _ in leases)]
        try:
            active, replicas = await self._renew(keys=keys, args=args)
        except (RedisError, OSError) as e:
            raise LedgerUnavailable(str(e) or type(e).__name__) from e
        return Renewal(int(active), int(replicas))

    async def release(self, lease: str, tenant: str) -> None:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._leases_key, lease)
                pipe.zrem(self._tenant_key(tenant), lease)
                await pipe.execute()
        except (RedisError, OSError) as e:
            raise LedgerUnavailable(str(e) or type(e).__name__) from e

    async def close(self) -> None:
        await self._client.aclose()
