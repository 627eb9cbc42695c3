"""Counters in Redis, shared by every replica.

Admission is one Lua script (one round trip, atomic: no replica can read a count another is about
to change, never read-modify-write), settlement another. Concurrency leases are members of a sorted set scored by
their expiry; the admission script drops expired members first, and this replica refreshes the
expiry of the leases it holds every third of the TTL, so a replica that dies stops refreshing and
its leases lapse on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

import structlog

from app.limits.backend import Ask, BackendUnavailable, Settlement, Verdict
from app.limits.resp import ReplyError, RespClient
from app.redis_breaker import BackendUnavailable as RedisAway
from app.redis_breaker import BreakerUser

logger = structlog.get_logger("chat.limits")

PREFIX = "chat:rl"
MINUTE_TTL_S = 120  # a minute's counters outlive the minute, then go by themselves
BUDGET_TTL_S = {"day": 2 * 86_400, "month": 62 * 86_400}

# KEYS: requests, tokens, leases, spend. ARGV: rpm, tpm, streams, budget (-1 = none), tokens asked,
# lease id, now, lease expiry, minute TTL, lease-set TTL.
ADMIT = """
local rpm, tpm, streams, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local asked = tonumber(ARGV[5])
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local spend = redis.call('GET', KEYS[4]) or '0'
local reason = ''
if budget >= 0 and tonumber(spend) >= budget then reason = 'budget'
elseif rpm > 0 and requests >= rpm then reason = 'requests'
elseif tpm > 0 and tokens + asked > tpm then reason = 'tokens'
elseif streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[7])
  if redis.call('ZCARD', KEYS[3]) >= streams then reason = 'concurrency' end
end
if reason == '' then
  requests = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[9])
  if asked > 0 then
    tokens = redis.call('INCRBY', KEYS[2], asked)
    redis.call('EXPIRE', KEYS[2], ARGV[9])
  end
  if streams > 0 then
    redis.call('ZADD', KEYS[3], ARGV[8], ARGV[6])
    redis.call('EXPIRE', KEYS[3], ARGV[10])
  end
end
return {reason, requests, tokens, spend}
"""

# KEYS: tokens, leases, spend. ARGV: lease id ('' = none), output tokens, spend ('0' = none),
# minute TTL, spend TTL (0 = none). One script rather than a pipeline of up to five commands:
# the request's last Redis call costs the gateway one command's work.
SETTLE = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
local tokens = tonumber(ARGV[2])
if tokens > 0 then
  redis.call('INCRBY', KEYS[1], tokens)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
if ARGV[3] ~= '0' then
  redis.call('INCRBYFLOAT', KEYS[3], ARGV[3])
  if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
end
return 1
"""


def _keys(bucket: str, minute: int, window_id: str) -> list[str]:
    base = f"{PREFIX}:{{{bucket}}}"  # one hash slot per key, should the Redis be a cluster
    return [f"{base}:req:{minute}", f"{base}:tok:{minute}", f"{base}:leases", f"{base}:spend:{window_id}"]


class RedisBackend:
    def __init__(
        self, url: str, *, lease_ttl_s: float, op_timeout_s: float, breaker: BreakerUser | None = None
    ) -> None:
        self._redis = RespClient(url, timeout_s=op_timeout_s)
        self._breaker = breaker  # the Redis server's shared breaker (app/redis_breakers.py), if any
        self._scripts = {ADMIT: _sha1(ADMIT), SETTLE: _sha1(SETTLE)}
        self._lease_ttl_s = lease_ttl_s
        self._leases: dict[str, str] = {}  # lease id -> its sorted set, for the leases this replica holds
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """``_eval`` through the shared breaker: refused at once while Redis is known to be away."""
        if self._breaker is None:
            return await self._eval(script, keys, args)
        try:
            return await self._breaker.run(self._eval, script, keys, args)
        except RedisAway as exc:
            raise TimeoutError(str(exc)) from exc  # an outage, as the callers already handle it

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script first if this Redis does not know it (new, or restarted)."""
        command = ("EVALSHA", self._scripts[script], len(keys), *keys, *args)
        reply = await self._redis.call(*command)
        if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
            await self._redis.call("SCRIPT", "LOAD", script)
            reply = await self._redis.call(*command)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def admit(self, ask: Ask) -> Verdict:
        keys = _keys(ask.bucket, ask.minute, ask.budget_window_id)
        budget = -1.0 if ask.budget_usd is None else ask.budget_usd
        args: list[Any] = [
            ask.requests_per_minute,
            ask.tokens_per_minute,
            ask.concurrent_streams,
            repr(budget),
            ask.tokens,
            ask.lease_id,
            repr(ask.now),
            repr(ask.now + self._lease_ttl_s),
            MINUTE_TTL_S,
            int(self._lease_ttl_s * 4) + 1,
        ]
        try:
            reason, requests, tokens, spend = await self._run(ADMIT, keys, args)
        except (ReplyError, OSError, TimeoutError) as exc:  # ConnectionError is an OSError
            raise BackendUnavailable(type(exc).__name__) from exc
        if not reason and ask.concurrent_streams:
            self._leases[ask.lease_id] = keys[2]
            self._ensure_refresher()
        return Verdict(reason.decode() if reason else None, int(requests), int(tokens), float(spend))

    def settle(self, settlement: Settlement) -> None:
        task = asyncio.get_running_loop().create_task(self._settle(settlement))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, s: Settlement) -> None:
        leases = self._leases.pop(s.lease_id, None) if s.lease_id is not None else None
        spend = s.spend if s.budget_window_id and s.spend else 0.0
        if leases is None and not s.tokens and not spend:
            return
        keys = _keys(s.bucket, s.minute, s.budget_window_id or "none")
        ttl = BUDGET_TTL_S.get(_window_kind(s.budget_window_id), 0) if s.budget_window_id else 0
        lease = s.lease_id if leases is not None and s.lease_id else ""
        args: list[Any] = [lease, s.tokens, repr(spend) if spend else "0", MINUTE_TTL_S, ttl]
        try:
            await self._run(SETTLE, [keys[1], keys[2], keys[3]], args)
        except (ReplyError, OSError, TimeoutError) as exc:
            # The lease lapses by its TTL; tokens and spend of this one request are lost with Redis.
            logger.debug("rate_limit_settle_failed", error=type(exc).__name__)

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_leases(), name="lease-refresher")

    async def _refresh_leases(self) -> None:
        while self._leases:
            await asyncio.sleep(self._lease_ttl_s / 3)
            expiry = repr(time.time() + self._lease_ttl_s)
            commands = [("ZADD", leases, "XX", expiry, lease_id) for lease_id, leases in list(self._leases.items())]
            with contextlib.suppress(OSError, TimeoutError):
                if commands:
                    await self._redis.pipeline(commands)

    async def health(self) -> bool:
        if self._breaker is not None:
            return await self._breaker.check()
        try:
            return await self._redis.call("PING") == b"PONG"
        except (OSError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        await self._redis.close()


def _sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _window_kind(window_id: str) -> str:
    """A budget window id's kind: "total", a day (YYYYMMDD) or a month (YYYYMM)."""
    return "total" if window_id == "total" else ("day" if len(window_id) == 8 else "month")
