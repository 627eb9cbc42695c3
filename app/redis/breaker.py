"""A circuit breaker for the features that lean on Redis (the response cache, the rate limiter and
the resume store share one per Redis server, ``app/redis/breakers.py``), so that a Redis outage
costs requests nothing: the first timeout of any of them opens it for all.

States::

    closed --(an operation fails with an outage error)--> open --(a probe succeeds)--> closed

- **closed**: every operation runs, bounded by ``op_timeout_s``.
- **open**: operations are refused at once with ``BackendUnavailable`` (no I/O, no waiting); the
  caller degrades (a cache miss, say). One background task re-tests the backend with ``probe``,
  one probe at a time, waiting ``backoff_s`` before the first and doubling up to
  ``max_backoff_s`` (each wait jittered by +/-20% so that replicas do not probe in step). The cap
  is short (2 s) because a probe is one PING per process, and it bounds how long the cache stays
  unused after Redis is back.

Only outage errors (connection refused or reset, timeouts) open the circuit: an error that Redis
itself answered (a bad value, a wrong type) proves that Redis is there and passes through as it is.

Each feature uses the shared breaker through a ``BreakerUser``: the breaker's one state, the
feature's own op bound (``cache.op_timeout_s``, ``rate_limit.op_timeout_s``), its name in the log.

Logging: one ``redis_unavailable`` line when an outage starts and one ``redis_available`` line when
it ends, carrying how long it lasted and how many operations were skipped and failed; never one
line per operation. Both are warnings so that a deployment logging at ``warning`` sees the pair.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import redis.exceptions
import structlog

P = ParamSpec("P")
T = TypeVar("T")

_log = structlog.get_logger("chat.redis")


class BackendUnavailable(Exception):
    """The operation did not reach the backend (circuit open) or failed with an outage error."""


def is_redis_outage(exc: BaseException) -> bool:
    """True for errors that say Redis cannot be reached in time; False for errors Redis answered."""
    if isinstance(exc, redis.exceptions.MaxConnectionsError):
        return False  # our own pool is exhausted: local pressure, not an outage
    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError | TimeoutError)


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        probe: Callable[[], Awaitable[Any]],
        *,
        op_timeout_s: float,
        target: str = "",
        backoff_s: float = 0.5,
        max_backoff_s: float = 2.0,
        is_outage: Callable[[BaseException], bool] = is_redis_outage,
        logger: Any = None,
    ) -> None:
        self.name = name
        self._probe = probe
        self._op_timeout = op_timeout_s
        self._target = target
        self._backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._is_outage = is_outage
        self._log = logger if logger is not None else _log
        self._open = False
        # Bumped on every state change, so that an operation that started before an outage came
        # and went cannot open the circuit again when its failure finally arrives.
        self._epoch = 0
        self._opened_at = 0.0
        self._skipped = 0
        self._failed = 0
        self._probes = 0
        self._probe_task: asyncio.Task[None] | None = None

    @property
    def available(self) -> bool:
        return not self._open

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` within the op bound; ``BackendUnavailable`` during an outage."""
        return await self.run_within(self._op_timeout, self.name, fn, *args, **kwargs)

    async def run_within(
        self, op_timeout_s: float, user: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``run`` with a caller's own op bound; ``user`` names it in the outage's log line."""
        if self._open:
            self._skipped += 1
            raise BackendUnavailable(self.name)
        epoch = self._epoch
        try:
            async with asyncio.timeout(op_timeout_s):
                return await fn(*args, **kwargs)
        except Exception as exc:
            if not self._is_outage(exc):
                raise
            self._failure(exc, epoch, user, op_timeout_s)
            raise BackendUnavailable(self.name) from exc

    def user(self, name: str, op_timeout_s: float) -> BreakerUser:
        """A feature's handle on this breaker, with its own op bound."""
        return BreakerUser(self, name, op_timeout_s)

    async def check(self) -> bool:
        """Readiness: False at once while open; else one probe, whose failure opens the circuit."""
        if self._open:
            return False
        try:
            await self.run(self._probe)
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- transitions ----------------------------------------------------------------------------

    def _failure(self, exc: BaseException, epoch: int, user: str, op_timeout_s: float) -> None:
        if self._open:
            self._failed += 1  # was in flight when the outage began
        elif epoch == self._epoch:
            self._trip(exc, user, op_timeout_s)

    def _trip(self, exc: BaseException, user: str, op_timeout_s: float) -> None:
        self._open = True
        self._epoch += 1
        self._opened_at = time.monotonic()
        self._skipped, self._failed, self._probes = 0, 1, 0
        self._log.warning(
            "redis_unavailable",
            backend=self.name,
            target=self._target,
            by=user,
            error=f"{type(exc).__name__}: {str(exc) or f'no answer within {op_timeout_s} s'}"[:200],
            retry_in_s=self._backoff,
        )
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_until_back())

    def _recover(self) -> None:
        self._open = False
        self._epoch += 1
        self._log.warning(
            "redis_available",
            backend=self.name,
            target=self._target,
            outage_s=round(time.monotonic() - self._opened_at, 3),
            skipped=self._skipped,
            failed=self._failed,
            probes=self._probes,
        )

    async def _probe_until_back(self) -> None:
        delay = self._backoff
        while True:
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            self._probes += 1
            try:
                async with asyncio.timeout(self._op_timeout):
                    await self._probe()
            except Exception:
                delay = min(delay * 2, self._max_backoff)
                continue
            self._probe_task = None
            self._recover()
            return


class BreakerUser:
    """One feature's view of a shared breaker: its state and probe, the feature's own op bound."""

    __slots__ = ("_breaker", "name", "op_timeout_s")

    def __init__(self, breaker: CircuitBreaker, name: str, op_timeout_s: float) -> None:
        self._breaker = breaker
        self.name = name
        self.op_timeout_s = op_timeout_s

    @property
    def available(self) -> bool:
        return self._breaker.available

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._breaker.run_within(self.op_timeout_s, self.name, fn, *args, **kwargs)

    async def check(self) -> bool:
        return await self._breaker.check()

    async def aclose(self) -> None:
        return None  # the breaker is shared: its owner (app/redis/breakers.py) closes it
