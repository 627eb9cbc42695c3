"""Where responses are kept (docs/responses.md, ``[responses]``): in this process's memory or in Redis.

A record is one response: the response object, the request's own input items, the previous
response it follows (a chain is rebuilt by walking these links, each record read once), the ids of
the responses before it (``chain``: what lets a walk read the whole chain in one ``get_many``
instead of one round trip per hop), the id of the chat stream whose log replays it, and its owner
(the gateway key's scope). Records are stored
encoded (msgspec JSON), so the memory store counts their real size against ``max_store_mb`` and
drops the oldest past it, and the Redis store is one ``SET ... PX`` per write.

``stored`` false: a response made with ``store: false`` that is kept only so that its stream can be
resumed (for ``streaming.resume_ttl_s``); ``GET`` and ``previous_response_id`` do not see it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Protocol

import msgspec
import redis.asyncio as aioredis

from app.redis.pool import IdleClosingPool, pool_options

OP_TIMEOUT_S = 1.0
KEY_PREFIX = "gw:response:"
#: Ids of earlier responses a record names: a chain up to this long is read in two round trips.
CHAIN_HINT = 64


class StoredResponse(msgspec.Struct):
    id: str
    owner: str
    response: dict[str, Any]
    input: list[dict[str, Any]]
    previous_response_id: str | None = None
    #: The ids of the responses this one follows, the nearest first (``previous_response_id``'s own
    #: chain after it), at most ``CHAIN_HINT`` of them.
    chain: list[str] = []
    stream_id: str | None = None
    namespaces: dict[str, str] = {}
    stored: bool = True


_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(StoredResponse).decode


class ResponseStore(Protocol):
    async def get(self, response_id: str) -> StoredResponse | None: ...
    async def get_many(self, response_ids: list[str]) -> list[StoredResponse | None]: ...
    async def put(self, record: StoredResponse, ttl_s: float) -> None: ...
    async def delete(self, response_id: str) -> bool: ...
    async def health(self) -> bool: ...
    async def close(self) -> None: ...


class MemoryResponseStore:
    """Records in this process, oldest dropped first past ``budget_bytes``. Records kept only so
    that their streams can be resumed (``store: false``) have a budget of their own, a quarter of
    that: a client that streams every turn unstored (the Codex CLI, each turn carrying the whole
    conversation) evicts its own kind, never another key's stored responses."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._kinds = {True: _Fifo(budget_bytes), False: _Fifo(max(1, budget_bytes // 4))}

    @property
    def bytes(self) -> int:
        return sum(kind.bytes for kind in self._kinds.values())

    def __len__(self) -> int:
        return sum(len(kind.records) for kind in self._kinds.values())

    async def get(self, response_id: str) -> StoredResponse | None:
        for kind in self._kinds.values():
            data = kind.get(response_id)
            if data is not None:
                return _decode(data)
        return None

    async def get_many(self, response_ids: list[str]) -> list[StoredResponse | None]:
        return [await self.get(response_id) for response_id in response_ids]

    async def put(self, record: StoredResponse, ttl_s: float) -> None:
        data = _encode(record)
        for kind in self._kinds.values():
            kind.drop(record.id)
        self._kinds[record.stored].put(record.id, data, ttl_s)

    async def delete(self, response_id: str) -> bool:
        return any([kind.drop(response_id) for kind in self._kinds.values()])

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        for kind in self._kinds.values():
            kind.records.clear()
            kind.bytes = 0


class _Fifo:
    """Encoded records by id with their expiry, the oldest dropped first past ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def get(self, response_id: str) -> bytes | None:
        entry = self.records.get(response_id)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self.drop(response_id)
            return None
        return entry[1]

    def put(self, response_id: str, data: bytes, ttl_s: float) -> None:
        if len(data) > self.budget:
            return  # larger than the whole store: never kept (a GET is then a 404, as after expiry)
        self.records[response_id] = (time.monotonic() + ttl_s, data)
        self.bytes += len(data)
        while self.bytes > self.budget:
            self.drop(next(iter(self.records)))

    def drop(self, response_id: str) -> bool:
        entry = self.records.pop(response_id, None)
        if entry is None:
            return False
        self.bytes -= len(entry[1])
        return True


class RedisResponseStore:
    """Records shared by every replica: ``gw:response:<id>`` holding the encoded record, with a TTL."""

    def __init__(self, url: str, prefix: str = KEY_PREFIX) -> None:
        self._redis = aioredis.Redis(connection_pool=IdleClosingPool.from_url(url, **pool_options(OP_TIMEOUT_S)))
        self._prefix = prefix

    async def get(self, response_id: str) -> StoredResponse | None:
        data = await self._redis.get(self._prefix + response_id)
        return _decode(data) if data is not None else None

    async def get_many(self, response_ids: list[str]) -> list[StoredResponse | None]:
        """One ``MGET``: a chain's records in one round trip."""
        found = await self._redis.mget([self._prefix + response_id for response_id in response_ids])
        return [_decode(data) if data is not None else None for data in found]

    async def put(self, record: StoredResponse, ttl_s: float) -> None:
        await self._redis.set(self._prefix + record.id, _encode(record), px=max(1, int(ttl_s * 1000)))

    async def delete(self, response_id: str) -> bool:
        return bool(await self._redis.delete(self._prefix + response_id))

    async def health(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
