"""redis-py's asyncio connection pool, plus the one thing it lacks: idle connections are closed.

redis-py keeps every connection it ever opened until the pool is closed, so a burst of 32
concurrent cache calls leaves 32 sockets open for the life of the process (found in the soak:
file descriptors never came back down). This pool stamps each connection when it is handed back
and, every ``idle_close_s / 2``, closes those that have sat unused for ``idle_close_s``. The pool
hands connections out last-in first-out, so under steady load the busy ones stay warm and only the
surplus of a past burst ages out; a closed one is simply opened again if load comes back.

The reaper is one task per pool, started by the first release (so inside the running loop) and
cancelled when the pool is disconnected. It touches the pool's private list under the pool's own
lock, the same way the pool itself does; tests/resume/test_redis_breaker.py watches it against a real
redis-server so that a redis-py upgrade that changes those internals is caught.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

DEFAULT_IDLE_CLOSE_S = 60.0


def pool_options(op_timeout_s: float, idle_close_s: float = DEFAULT_IDLE_CLOSE_S) -> dict[str, Any]:
    """Keyword arguments for ``IdleClosingPool`` shared by every Redis-backed feature.

    One immediate retry on a connection error: a pooled connection can be dead without anyone
    knowing (Redis restarted, or its ``timeout`` setting closed an idle client), and the first
    command on it fails with "Connection closed by server" although Redis is fine; the retry
    reconnects and the circuit breaker never sees it. A Redis that is really down refuses the
    reconnect at once, so the retry costs nothing then; timeouts are not retried (the op bound
    stays the op bound). Commands that must not run twice (a reply lost after the command ran)
    should pass their own ``retry``.
    """
    return {
        "socket_timeout": op_timeout_s,
        "socket_connect_timeout": op_timeout_s,
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "idle_close_s": idle_close_s,
    }


class IdleClosingPool(ConnectionPool):  # type: ignore[misc]
    def __init__(self, *args: Any, idle_close_s: float = DEFAULT_IDLE_CLOSE_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_close_s = idle_close_s
        self._released_at: dict[AbstractConnection, float] = {}
        self._reaper: asyncio.Task[None] | None = None

    async def release(self, connection: AbstractConnection) -> None:
        self._released_at[connection] = time.monotonic()
        await super().release(connection)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close_idle(self) -> int:
        """Close the connections idle for ``idle_close_s``; return how many were closed."""
        cutoff = time.monotonic() - self.idle_close_s
        async with self._lock:
            stale = [c for c in self._available_connections if self._released_at.get(c, 0.0) <= cutoff]
            # Out of the pool before the lock is let go: nobody can be handed one while it closes.
            for conn in stale:
                self._available_connections.remove(conn)
                self._released_at.pop(conn, None)
        for conn in stale:
            try:
                await conn.disconnect()
            except Exception:
                pass  # already broken: dropping it was the point
        return len(stale)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.idle_close_s / 2)
            await self.close_idle()

    async def disconnect(self, inuse_connections: bool = True) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is not None and reaper is not asyncio.current_task():
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
        await super().disconnect(inuse_connections)
