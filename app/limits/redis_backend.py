"""Counters in Redis, shared by every replica.

Admission is one Lua script (one round trip, atomic: no replica can read a count another is about
to change, never read-modify-write), settlement another. Every call in flight holds a lease: a
member of a sorted set scored by its expiry, with the call's reservation (USD against the budget,
tokens against the minute) in a hash under the same id. The admission script drops expired leases
and their reservations first, and this replica refreshes the expiry of the leases it holds every
third of the TTL, so a replica that dies stops refreshing and its leases lapse on their own.

A call whose outcome this replica could not learn (the op bound ran out while Redis stalled) is
made harmless once Redis answers again: an admission that may have run is compensated (its lease,
reservation and counts taken back, its id tombstoned so a late run does nothing), and a settlement
that may not have run is sent again, charging only if its lease is still there. So a stall never
leaves leases that nobody will release, and never charges a call twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from typing import Any

import structlog

from app.limits.backend import Ask, BackendUnavailable, Settlement, Verdict
from app.redis.breaker import BackendUnavailable as RedisAway
from app.redis.breaker import BreakerUser
from app.redis.resp import ReplyError, RespClient

logger = structlog.get_logger("chat.limits")

PREFIX = "chat:rl"
MINUTE_TTL_S = 120  # a minute's counters outlive the minute, then go by themselves
BUDGET_TTL_S = {"day": 2 * 86_400, "month": 62 * 86_400}
#: Calls of unknown outcome kept for compensation; past this many the oldest lapse by their TTL.
MAX_UNKNOWN = 10_000

# KEYS: requests, tokens, leases, spend, reservations, tombstones.
# ARGV: rpm, tpm, streams, budget (-1 = none), tokens asked, lease id ('' = none), now, lease expiry,
# minute TTL, lease-set TTL, reserved USD, reserved tokens.
ADMIT = """
local lease = ARGV[6]
if lease ~= '' and redis.call('SISMEMBER', KEYS[6], lease) == 1 then return {'stale', 0, 0, '0'} end
local rpm, tpm, streams, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local asked = tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[7], 'LIMIT', 0, 1000)
for i = 1, #expired do
  redis.call('ZREM', KEYS[3], expired[i])
  redis.call('HDEL', KEYS[5], expired[i])
end
local rusd, rtok = 0, 0
if budget >= 0 or tpm > 0 then
  local held = redis.call('HVALS', KEYS[5])
  for i = 1, #held do
    local u, t = string.match(held[i], '(%S+) (%S+)')
    rusd = rusd + tonumber(u)
    rtok = rtok + tonumber(t)
  end
end
local requests = tonumber(redis.call('GET', KEYS[1]) or '0')
local tokens = tonumber(redis.call('GET', KEYS[2]) or '0')
local spend = tonumber(redis.call('GET', KEYS[4]) or '0') + rusd
local reason = ''
if budget >= 0 and spend >= budget then reason = 'budget'
elseif rpm > 0 and requests >= rpm then reason = 'requests'
elseif tpm > 0 and tokens + rtok + asked > tpm then reason = 'tokens'
elseif streams > 0 and redis.call('ZCARD', KEYS[3]) >= streams then reason = 'concurrency'
end
if reason == '' then
  requests = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[9])
  if asked > 0 then
    tokens = redis.call('INCRBY', KEYS[2], asked)
    redis.call('EXPIRE', KEYS[2], ARGV[9])
  end
  if lease ~= '' then
    redis.call('ZADD', KEYS[3], ARGV[8], lease)
    redis.call('EXPIRE', KEYS[3], ARGV[10])
    if tonumber(ARGV[11]) > 0 or tonumber(ARGV[12]) > 0 then
      redis.call('HSET', KEYS[5], lease, ARGV[11] .. ' ' .. ARGV[12])
      redis.call('EXPIRE', KEYS[5], ARGV[10])
    end
  end
end
return {reason, requests, tokens + rtok, tostring(spend)}
"""

# KEYS: tokens, leases, spend, reservations. ARGV: lease id ('' = none), output tokens, spend
# ('0' = none), minute TTL, spend TTL (0 = none), retried ('1': charge only if the lease is still
# held, i.e. the first attempt never ran). One script rather than a pipeline of up to six
# commands: the request's last Redis call costs the gateway one command's work.
SETTLE = """
if ARGV[1] ~= '' then
  local held = redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[4], ARGV[1])
  if held == 0 and ARGV[6] == '1' then return 0 end
end
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

# Takes back an admission that may have run after its caller gave up. KEYS: requests, tokens,
# leases, reservations, tombstones. ARGV: lease id, tokens asked, tombstone TTL.
COMPENSATE = """
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[3])
if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[4], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end
  local asked = tonumber(ARGV[2])
  if asked > 0 and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], asked) end
  return 1
end
return 0
"""


def _keys(bucket: str, minute: int, window_id: str) -> list[str]:
    base = f"{PREFIX}:{{{bucket}}}"  # one hash slot per key, should the Redis be a cluster
    return [
        f"{base}:req:{minute}",
        f"{base}:tok:{minute}",
        f"{base}:leases",
        f"{base}:spend:{window_id}",
        f"{base}:resv",
        f"{base}:gone",
    ]


class NotSent(Exception):
    """The shared breaker refused the call at once (Redis known to be away): it never ran."""


class RedisBackend:
    def __init__(
        self, url: str, *, lease_ttl_s: float, op_timeout_s: float, breaker: BreakerUser | None = None
    ) -> None:
        self._redis = RespClient(url, timeout_s=op_timeout_s)
        self._breaker = breaker  # the Redis server's shared breaker (app/redis/breakers.py), if any
        self._scripts = {script: _sha1(script) for script in (ADMIT, SETTLE, COMPENSATE)}
        self._lease_ttl_s = lease_ttl_s
        #: lease id -> its sorted set and its reservations' hash, for the leases this replica holds
        self._leases: dict[str, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresher: asyncio.Task[None] | None = None
        # Calls whose last Redis call timed out: admissions to take back, settlements to send again.
        self._unknown_admits: deque[Ask] = deque(maxlen=MAX_UNKNOWN)
        self._unsent: deque[Settlement] = deque(maxlen=MAX_UNKNOWN)
        self._recovery = asyncio.Lock()

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """``_eval`` through the shared breaker: refused at once while Redis is known to be away."""
        if self._breaker is None:
            return await self._eval(script, keys, args)
        try:
            return await self._breaker.run(self._eval, script, keys, args)
        except RedisAway as exc:
            if exc.__cause__ is None:
                raise NotSent(str(exc)) from None  # refused at once: the call never reached Redis
            raise TimeoutError(str(exc)) from exc  # it met the outage: it may have run, as a timeout

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
            repr(ask.reserve_usd),
            ask.reserve_tokens,
        ]
        try:
            # Before this admission counts them: what a stall left behind is put right first.
            if self._unknown_admits:
                await self._compensate()
            if self._unsent:
                await self._resend()
            reason, requests, tokens, spend = await self._run(ADMIT, keys, args)
        except NotSent as exc:
            raise BackendUnavailable("Redis is away (circuit open)") from exc  # nothing to take back
        except (OSError, TimeoutError) as exc:  # ConnectionError is an OSError
            if ask.lease_id:
                self._unknown_admits.append(ask)  # it may still run once Redis answers again
            raise BackendUnavailable(type(exc).__name__) from exc
        except asyncio.CancelledError:
            # The caller left while the script was on its way: it may have run, and its lease would
            # hold a stream slot until it lapsed. Taken back before the next admission, as above.
            if ask.lease_id:
                self._unknown_admits.append(ask)
            raise
        except ReplyError as exc:
            raise BackendUnavailable(type(exc).__name__) from exc
        if reason == b"stale":  # only an id this replica gave up on is tombstoned; never a live call's
            raise BackendUnavailable("stale admission")
        if not reason and ask.lease_id:
            self._leases[ask.lease_id] = (keys[2], keys[4])
            self._ensure_refresher()
        return Verdict(reason.decode() if reason else None, int(requests), int(tokens), float(spend))

    async def _compensate(self) -> None:
        # One recovery at a time: the admissions that arrive meanwhile wait for it, then find it done.
        async with self._recovery:
            while self._unknown_admits:
                ask = self._unknown_admits.popleft()
                keys = _keys(ask.bucket, ask.minute, "none")
                args = [ask.lease_id, ask.tokens, int(self._lease_ttl_s * 4) + 1]
                try:
                    await self._run(COMPENSATE, [keys[0], keys[1], keys[2], keys[4], keys[5]], args)
                except BaseException:
                    self._unknown_admits.appendleft(ask)  # still to do once Redis answers
                    raise

    async def _resend(self) -> None:
        async with self._recovery:
            while self._unsent:
                settlement = self._unsent.popleft()
                if not await self._settle(settlement):
                    return  # down again: it went back on the queue

    def settle(self, settlement: Settlement) -> None:
        self._spawn(self._settle(settlement))

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, s: Settlement) -> bool:
        """Send one settlement; False (and queued again) when Redis did not answer."""
        if s.lease_id is not None:
            self._leases.pop(s.lease_id, None)
        spend = s.spend if s.budget_window_id and s.spend else 0.0
        if not s.lease_id and not s.tokens and not spend:
            return True
        keys = _keys(s.bucket, s.minute, s.budget_window_id or "none")
        ttl = BUDGET_TTL_S.get(_window_kind(s.budget_window_id), 0) if s.budget_window_id else 0
        args: list[Any] = [
            s.lease_id or "",
            s.tokens,
            repr(spend) if spend else "0",
            MINUTE_TTL_S,
            ttl,
            "1" if s.retried else "0",
        ]
        try:
            await self._run(SETTLE, [keys[1], keys[2], keys[3], keys[4]], args)
        except NotSent:
            self._unsent.append(s)  # never sent: sent once Redis answers, as it is
            return False
        except (OSError, TimeoutError) as exc:
            # It may have run: sent again once Redis answers, charging only if its lease is still held.
            logger.debug("rate_limit_settle_failed", error=type(exc).__name__)
            s.retried = True
            self._unsent.append(s)
            return False
        except ReplyError as exc:
            logger.debug("rate_limit_settle_failed", error=type(exc).__name__)
        return True

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_leases(), name="lease-refresher")

    async def _refresh_leases(self) -> None:
        while self._leases:
            await asyncio.sleep(self._lease_ttl_s / 3)
            expiry = repr(time.time() + self._lease_ttl_s)
            held = list(self._leases.items())
            commands: list[tuple[Any, ...]] = [
                ("ZADD", leases, "XX", expiry, lease_id) for lease_id, (leases, _) in held
            ]
            # The keys themselves too: admission sets their TTL, and a key no call was admitted on
            # for that long would vanish with its running calls' leases and reservations.
            ttl = int(self._lease_ttl_s * 4) + 1
            for key in {key for _, pair in held for key in pair}:
                commands.append(("EXPIRE", key, ttl))
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
