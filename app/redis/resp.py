"""A minimal Redis client for the limiter's hot path: one connection, commands pipelined on it.

Each admission is one command written to the socket at once, behind whatever other requests have
in flight (Redis answers in order, so replies are matched to a FIFO of futures); no connection pool
checkout, no per-command task: redis-py's pure-Python parsing and pool handling per command would be
paid by every admission (loadtests/README.md has the comparison). Replies are RESP2; an error reply is returned as a
``ReplyError`` value, a connection failure raises ``ConnectionError`` / ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

from app.aio.shared_attempt import shared_attempt

_INCOMPLETE = object()


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: (value, next position), or (_INCOMPLETE, pos)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind, line = buf[pos : pos + 1], bytes(buf[pos + 1 : end])
    nxt = end + 2
    if kind == b"+":
        return line, nxt
    if kind == b":":
        return int(line), nxt
    if kind == b"-":
        return ReplyError(line.decode(errors="replace")), nxt
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, nxt
        if len(buf) < nxt + size + 2:
            return _INCOMPLETE, pos
        return bytes(buf[nxt : nxt + size]), nxt + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, nxt
        items = []
        for _ in range(count):
            item, nxt = parse(buf, nxt)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, nxt
    raise ConnectionError(f"unreadable reply from Redis: {bytes(buf[pos : pos + 16])!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.sent_at: deque[float] = deque()  # when each waiter's command was written, in order
        self.buf = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport: it writes

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while self.waiters:
                value, pos_after = parse(self.buf, pos)
                if value is _INCOMPLETE:
                    break
                pos = pos_after
                waiter = self.waiters.popleft()
                self.sent_at.popleft()
                if not waiter.done():  # a caller that timed out no longer waits; the reply is dropped
                    waiter.set_result(value)
        except (ValueError, ConnectionError) as exc:
            self._fail(ConnectionError(str(exc)))
            if self.transport is not None:
                self.transport.close()
            return
        if pos:
            del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("connection to Redis lost"))

    def _fail(self, exc: Exception) -> None:
        self.closed = True
        self.sent_at.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def send(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self.waiters.extend(futures)
        self.sent_at.extend([loop.time()] * replies)
        self.transport.write(payload)
        return futures

    def overdue(self, now: float, bound: float) -> bool:
        """Whether the oldest reply still owed has been owed for longer than ``bound``."""
        return bool(self.sent_at) and now - self.sent_at[0] > bound

    def abandon(self) -> None:
        """Close the connection at once; whatever still waits on it fails."""
        if self.transport is not None:
            self.transport.abort()
        self._fail(ConnectionError("connection to Redis abandoned: a reply was overdue"))


class RespClient:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        parsed = urlparse(url)
        self._scheme = parsed.scheme
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._path = parsed.path
        self._db = int(parsed.path.lstrip("/") or 0) if parsed.scheme != "unix" else 0
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        self._timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            if not protocol.overdue(asyncio.get_running_loop().time(), self._timeout_s):
                return protocol
            # A reply is owed for longer than any caller waits for one. A Redis that went away without
            # a word (a failover to another address, a flow dropped on the way) leaves the connection
            # open until the kernel gives up on it, a quarter of an hour later, and every command on it
            # times out meanwhile; a new connection finds where Redis is now. The oldest reply's caller
            # has timed out; any other still waiting fails now, as its wait would have.
            protocol.abandon()
            self._protocol = None
        if self._connecting is None or self._connecting.done():
            # One connection attempt at a time; everybody who needs it waits for that one.
            self._connecting = shared_attempt(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout_s):
            if self._scheme == "unix":
                _, protocol = await loop.create_unix_connection(_Protocol, self._path)
            else:
                context = ssl.create_default_context() if self._scheme == "rediss" else None
                _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=context)
            setup: list[tuple[Any, ...]] = []
            if self._password is not None:
                setup.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
            if self._db:
                setup.append(("SELECT", self._db))
            if setup:
                for reply in await asyncio.gather(*protocol.send(b"".join(encode(c) for c in setup), len(setup))):
                    if isinstance(reply, ReplyError):
                        protocol.transport.close()  # type: ignore[union-attr]
                        raise ConnectionError(f"Redis refused the connection set-up: {reply}")
        self._protocol = protocol
        return protocol

    async def call(self, *args: Any) -> Any:
        """One command's reply (a ``ReplyError`` for an error reply)."""
        return (await self.pipeline([args]))[0]

    async def pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands in one write; their replies in order."""
        async with asyncio.timeout(self._timeout_s):
            protocol = await self._connection()
            futures = protocol.send(b"".join(encode(c) for c in commands), len(commands))
            try:
                return [await f for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()  # nobody will read them: their replies are dropped as they come
                raise

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
