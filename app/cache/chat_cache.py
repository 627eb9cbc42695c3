"""The response cache around chat calls: keys, bounded lookups, single-flight, recording streams.

Degraded, never down: every backend call is bounded by ``cache.op_timeout_s`` (the backend's own
bound: the Redis backend's circuit breaker, which also refuses calls at once during an outage).
A failed or refused read is a miss and a failed or refused write is a lost entry; both are counted
as ``error``. Outages are logged by the breaker, once when they start and once when they end;
only errors that are not outages are logged here.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec
import structlog

from app.cache.answer import CachedAnswer, assemble, split
from app.cache.backends import CacheBackend
from app.config.settings import CacheSettings, DeploymentSettings
from app.domain.chunks import Chunk, Completion, Usage
from app.redis.breaker import BackendUnavailable

logger = structlog.get_logger("chat.cache")

#: Bump when the key material or the stored value changes shape: old entries simply stop matching.
KEY_VERSION: Final = "v1"
#: Request fields that do not change the answer.
NOT_IN_KEY: Final = frozenset({"model", "stream", "stream_options", "user"})

HIT, MISS, BYPASS, ERROR = "hit", "miss", "bypass", "error"


def cache_key(body: dict[str, Any], deployment: DeploymentSettings, scope: str) -> str:
    """SHA-256 over a canonical encoding (sorted keys, compact) of what changes the answer."""
    material = {k: v for k, v in body.items() if k not in NOT_IN_KEY}
    # The resolved deployment, not the public name: re-pointing a name at another model changes keys.
    material["\x00deployment"] = [deployment.litellm_model, deployment.api_base]
    digest = hashlib.sha256(msgspec.json.encode(material, order="sorted")).hexdigest()
    return f"chat:{KEY_VERSION}:{scope}:{digest}"


class CachePolicy(msgspec.Struct, frozen=True):
    read: bool
    write: bool


def policy_from(cache_control: str | None) -> CachePolicy:
    directives = {d.strip().lower().split("=", 1)[0] for d in (cache_control or "").split(",")}
    return CachePolicy(
        read="no-cache" not in directives and "no-store" not in directives, write="no-store" not in directives
    )


class CacheDecision(msgspec.Struct):
    """What the cache said about one request: a stored answer, or the flight this request leads.

    A request that leads a flight must land it on every path: ``record`` hands that duty to the
    stream it wraps (closing the stream lands it), ``land_completion`` does it for a JSON call.
    """

    status: str | None  # the X-Cache header: HIT, MISS, BYPASS; None when caching is off
    answer: CachedAnswer | None = None
    key: str = ""
    flight: asyncio.Future[CachedAnswer | None] | None = None
    cache: Any = None  # the ChatCache that made the decision, when it leads a flight

    def record(self, source: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """``source``, recorded into this request's flight if it leads one."""
        if self.flight is None or self.cache is None:
            return source
        return self.cache.recording(self.key, self.flight, source)

    def land_completion(self, completion: Completion | None) -> None:
        """Land this request's flight with a JSON call's result (None: it failed)."""
        if self.flight is not None and self.cache is not None:
            self.cache.land(self.key, self.flight, answer_from_completion(completion) if completion else None)


NO_CACHE: Final = CacheDecision(status=None)


class ChatCache:
    def __init__(
        self, backend: CacheBackend, settings: CacheSettings, on_result: Callable[[str], None] | None = None
    ) -> None:
        self.backend = backend
        self._ttl = settings.ttl_s
        self._on_result = on_result or (lambda _r: None)
        self._flights: dict[str, asyncio.Future[CachedAnswer | None]] = {}
        self._writes: set[asyncio.Task[None]] = set()

    def count(self, result: str) -> None:
        self._on_result(result)

    async def consult(self, key: str, cache_control: str | None, wait_s: float) -> CacheDecision:
        """The one call per request: a stored answer, an identical call in flight on this replica
        (followed for at most ``wait_s``), or the duty to lead the call and land its answer."""
        policy = policy_from(cache_control)
        if not policy.read:
            self.count(BYPASS)
            return self._decision("BYPASS", key, lead=policy.write)
        answer, ok = await self.lookup(key)
        if answer is None and (flight := self.flight(key)) is not None:
            answer = await self.follow(flight, wait_s)
        if answer is not None:
            self.count(HIT)
            return CacheDecision(status="HIT", answer=answer, key=key)
        self.count(MISS if ok else ERROR)
        return self._decision("MISS" if policy.write else "BYPASS", key, lead=policy.write)

    def _decision(self, status: str, key: str, *, lead: bool) -> CacheDecision:
        if not lead:
            return CacheDecision(status=status, key=key)
        return CacheDecision(status=status, key=key, flight=self.lead(key), cache=self)

    async def lookup(self, key: str) -> tuple[CachedAnswer | None, bool]:
        """(answer, ok): ok is False when the backend failed or held garbage (then it is a miss)."""
        try:
            return await self.backend.get(key), True
        except BackendUnavailable:
            return None, False
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            logger.warning("cache_value_unreadable", key=key[-16:], error=str(exc)[:200])
            self._spawn(self._delete(key))
            return None, False
        except Exception as exc:
            logger.warning("cache_unavailable", op="get", error=f"{type(exc).__name__}: {exc}"[:200])
            return None, False

    def flight(self, key: str) -> asyncio.Future[CachedAnswer | None] | None:
        return self._flights.get(key)

    def lead(self, key: str) -> asyncio.Future[CachedAnswer | None]:
        future: asyncio.Future[CachedAnswer | None] = asyncio.get_running_loop().create_future()
        self._flights[key] = future
        return future

    def land(self, key: str, future: asyncio.Future[CachedAnswer | None], answer: CachedAnswer | None) -> None:
        if not future.done():
            future.set_result(answer)
        if answer is None:
            self._forget(key, future)
        else:
            # The landed flight keeps answering until the backend has the entry, so that a request
            # whose lookup raced the write does not call the provider again.
            self._spawn(self._store(key, answer, future))

    def _forget(self, key: str, future: asyncio.Future[CachedAnswer | None]) -> None:
        if self._flights.get(key) is future:
            del self._flights[key]

    async def follow(self, future: asyncio.Future[CachedAnswer | None], timeout: float) -> CachedAnswer | None:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            return None

    def recording(
        self, key: str, future: asyncio.Future[CachedAnswer | None], source: AsyncIterator[Chunk]
    ) -> AsyncIterator[Chunk]:
        """Relay ``source`` and, if it completes, store the assembled answer; errors and partials never."""
        return _Recording(self, key, future, source)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _store(self, key: str, answer: CachedAnswer, future: asyncio.Future[CachedAnswer | None]) -> None:
        # The answer was served either way; a failed write only loses the next hit.
        try:
            await self.backend.set(key, answer, self._ttl)
        except BackendUnavailable:
            self.count(ERROR)
        except Exception as exc:
            self.count(ERROR)
            logger.warning("cache_unavailable", op="set", error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self._forget(key, future)

    async def _delete(self, key: str) -> None:
        try:
            await self.backend.delete(key)
        except Exception:
            pass

    async def health(self) -> bool:
        return await self.backend.health()

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await self.backend.close()


def answer_from_completion(completion: Completion) -> CachedAnswer:
    usage = completion.usage
    return CachedAnswer(
        completion=completion.raw,
        chunks=split(completion.raw),
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
    )


def answer_from_chunks(chunks: list[bytes], usage: Usage | None) -> CachedAnswer:
    return CachedAnswer(
        completion=assemble(chunks, usage),
        chunks=chunks,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
    )


class _Recording:
    """A stream's chunks on their way to the client, recorded for the cache.

    A class rather than an async generator: a generator that is closed before its first step never
    runs its ``finally``, so a stream cancelled before it started (a WebSocket create followed at
    once by its cancel) would never land its flight, and every identical request after it would
    wait for an answer that cannot come. ``aclose`` lands the flight on every path.
    """

    __slots__ = ("_cache", "_chunks", "_future", "_key", "_landed", "_source", "_usage")

    def __init__(
        self, cache: ChatCache, key: str, future: asyncio.Future[CachedAnswer | None], source: AsyncIterator[Chunk]
    ) -> None:
        self._cache = cache
        self._key = key
        self._future = future
        self._source = source
        self._chunks: list[bytes] = []
        self._usage: Usage | None = None
        self._landed = False

    def __aiter__(self) -> _Recording:
        return self

    async def __anext__(self) -> Chunk:
        try:
            chunk = await anext(self._source)
        except StopAsyncIteration:
            self._land(answer_from_chunks(self._chunks, self._usage))
            raise
        except BaseException:
            self._land(None)
            raise
        if chunk.usage is not None:
            self._usage = chunk.usage
        if not chunk.usage_only:
            self._chunks.append(chunk.raw)
        return chunk

    def _land(self, answer: CachedAnswer | None) -> None:
        if not self._landed:
            self._landed = True
            self._cache.land(self._key, self._future, answer)

    async def aclose(self) -> None:
        completed = self._landed and self._future.done() and self._future.result() is not None
        self._land(None)
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None and not completed:
            await aclose()
