"""Cache backends on aiocache, chosen by configuration alone: in-memory LRU or Redis.

Values cross the Redis boundary as msgpack (msgspec), never pickle: nothing read from Redis is
ever unpickled, and bytes that do not decode are a miss, not a crash. The Redis backend goes
through a circuit breaker (``app/redis/breaker.py``): while Redis is away its calls raise
``BackendUnavailable`` at once instead of waiting for a timeout.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

import msgspec
from aiocache import RedisCache, SimpleMemoryCache
from aiocache.serializers import BaseSerializer, NullSerializer

from app.cache.answer import CachedAnswer
from app.config.settings import CacheSettings
from app.redis.breaker import BreakerUser, CircuitBreaker
from app.redis.pool import DEFAULT_IDLE_CLOSE_S, IdleClosingPool, pool_options

if TYPE_CHECKING:
    from app.redis.breakers import RedisBreakers


class CacheBackend(Protocol):
    async def get(self, key: str) -> CachedAnswer | None: ...
    async def set(self, key: str, value: CachedAnswer, ttl: float) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def health(self) -> bool: ...
    async def close(self) -> None: ...


class MsgpackSerializer(BaseSerializer):  # type: ignore[misc]
    DEFAULT_ENCODING = None  # bytes in, bytes out

    def __init__(self) -> None:
        super().__init__()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(CachedAnswer)

    def dumps(self, value: CachedAnswer) -> bytes:
        return self._encoder.encode(value)

    def loads(self, value: bytes | None) -> CachedAnswer | None:
        if value is None:
            return None
        return self._decoder.decode(value)


class _LRUMemoryCache(SimpleMemoryCache):  # type: ignore[misc]
    """aiocache's memory cache plus an entry bound with least-recently-used eviction.

    aiocache keeps entries in ``self._cache`` and expiry timers in ``self._handlers``; making the
    dict ordered and trimming it on set is all an LRU needs.
    """

    def __init__(self, max_entries: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._max_entries = max_entries

    async def _get(self, key: str, encoding: str | None = "utf-8", _conn: Any = None) -> Any:
        value = self._cache.get(key)
        if value is not None:
            self._cache.move_to_end(key)
        return value

    async def _set(self, key: str, value: Any, ttl: Any = None, _cas_token: Any = None, _conn: Any = None) -> bool:
        result: bool = await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
        self._cache.move_to_end(key)
        while len(self._cache) > self._max_entries:
            oldest, _ = self._cache.popitem(last=False)
            handle = self._handlers.pop(oldest, None)
            if handle is not None:
                handle.cancel()
        return result


class MemoryBackend:
    def __init__(self, max_entries: int) -> None:
        self._cache = _LRUMemoryCache(max_entries, serializer=NullSerializer(), timeout=None)

    def __len__(self) -> int:
        return len(self._cache._cache)

    async def get(self, key: str) -> CachedAnswer | None:
        value = await self._cache.get(key)
        return value if isinstance(value, CachedAnswer) else None

    async def set(self, key: str, value: CachedAnswer, ttl: float) -> None:
        await self._cache.set(key, value, ttl=ttl)

    async def delete(self, key: str) -> None:
        await self._cache.delete(key)

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        await self._cache.clear()


class RedisBackend:
    """The shared cache in Redis, behind a circuit breaker: during an outage every call fails at once.

    ``op_timeout_s`` bounds each call (the breaker's bound; aiocache's own, which wraps every call
    in a task, is switched off). Idle connections are closed after ``idle_close_s``.
    """

    def __init__(
        self,
        url: str,
        op_timeout_s: float,
        *,
        idle_close_s: float = DEFAULT_IDLE_CLOSE_S,
        breaker: BreakerUser | None = None,
    ) -> None:
        parsed = urlparse(url)
        db = (parsed.path or "/0").lstrip("/") or "0"
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        options = pool_options(op_timeout_s, idle_close_s)
        self._cache = RedisCache(
            serializer=MsgpackSerializer(),
            endpoint=host,
            port=port,
            db=int(db),
            password=unquote(parsed.password) if parsed.password else None,
            ssl=parsed.scheme == "rediss",
            create_connection_timeout=options.pop("socket_connect_timeout"),  # aiocache passes it itself
            timeout=None,
            connection_pool_class=IdleClosingPool,
            connection_pool_kwargs=options,
        )
        # The server's shared breaker (app/redis/breakers.py); a breaker of its own when used alone.
        self._own: CircuitBreaker | None = None
        if breaker is None:
            self._own = CircuitBreaker(
                "cache", self._cache.client.ping, op_timeout_s=op_timeout_s, target=f"{host}:{port}/{db}"
            )
            breaker = self._own.user("cache", op_timeout_s)
        self.breaker = breaker

    async def get(self, key: str) -> CachedAnswer | None:
        value: CachedAnswer | None = await self.breaker.run(self._cache.get, key)
        return value

    async def set(self, key: str, value: CachedAnswer, ttl: float) -> None:
        await self.breaker.run(self._cache.set, key, value, ttl=max(1, int(ttl)))

    async def delete(self, key: str) -> None:
        await self.breaker.run(self._cache.delete, key)

    async def health(self) -> bool:
        return await self.breaker.check()

    async def close(self) -> None:
        if self._own is not None:
            await self._own.aclose()
        await self._cache.close()
        await self._cache.client.aclose()


def build_backend(settings: CacheSettings, breakers: RedisBreakers | None = None) -> CacheBackend:
    if settings.backend == "redis":
        breaker = breakers.user(settings.redis_url, "cache", settings.op_timeout_s) if breakers else None
        return RedisBackend(settings.redis_url, settings.op_timeout_s, breaker=breaker)
    return MemoryBackend(settings.max_entries)
