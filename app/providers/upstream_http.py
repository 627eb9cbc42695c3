"""The relay's HTTP/1.1 client: one keep-alive pool per upstream origin, a POST, a streamed body.

The relay needs one thing from a client: write a prepared request on a warm connection and hand
over the response body as it arrives. aiohttp does that and much more, and the more is paid on
every call: measured on loopback at concurrency 1, ~330 us from the call to the upstream holding the
request, against ~85 us for a plain write on the same kind of connection, and several coroutine and
iterator layers per body chunk. Here a request is one ``transport.write`` on a pooled connection, and
body bytes go from the protocol callback to the reader with one future wake-up. Responses are parsed
by httptools, the parser uvicorn serves with. TLS is asyncio's (``ssl.create_default_context()``, the
system's trust store, as aiohttp uses); there is no proxy, redirect or cookie support, which an API
relay does not use.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import httptools
from yarl import URL

#: Body bytes buffered for a reader that is behind before the socket stops being read.
HIGH_WATER = 256 * 1024


class UpstreamConnectionError(Exception):
    """The connection failed: refused, reset, closed mid-response, or the reply was not HTTP."""


class _StaleConnection(UpstreamConnectionError):
    """A reused keep-alive connection closed before any byte of the reply: safe to retry once."""


class UpstreamResponse:
    """One response: status and headers once they are in, then the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_finished",
        "_headers_ready",
        "_pool",
        "_received",
        "_release_timer",
        "_waiter",
        "headers",
        "keep_alive",
        "status",
    )

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._headers_ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._done = False  # the whole body has been received
        self._error: Exception | None = None
        self._received = False  # any byte of the reply arrived
        self._finished = False  # released or closed: the connection is no longer ours
        self._release_timer: asyncio.TimerHandle | None = None  # released before the body's last bytes

    # -- fed by the connection --------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_headers(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        if not self._headers_ready.done():
            self._headers_ready.set_result(None)

    def _on_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def _on_complete(self) -> None:
        self._done = True
        if self._release_timer is not None:  # released early: now the connection can go back
            self._release_timer.cancel()
            self._pool._give_back(self._conn, reusable=self.keep_alive)
            return
        self._wake()

    def _on_lost(self, error: Exception) -> None:
        if self._done:
            return
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._pool._give_back(self._conn, reusable=False)
            return
        self._error = error
        if not self._headers_ready.done():
            self._headers_ready.set_exception(error)
        self._wake()

    # -- read by the relay ------------------------------------------------------------------------

    async def _wait_headers(self) -> None:
        await self._headers_ready

    async def read_some(self) -> bytes:
        """The body bytes that have arrived (waiting for some if none have); ``b""`` at the end."""
        while not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._buffered > HIGH_WATER:
            self._conn.resume()
        self._buffered = 0
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (at most ``limit`` bytes: an error reply is never worth more)."""
        parts: list[bytes] = []
        size = 0
        while data := await self.read_some():
            parts.append(data)
            size += len(data)
            if limit is not None and size >= limit:
                break
        return b"".join(parts)[:limit] if limit is not None else b"".join(parts)

    def release(self) -> None:
        """Done with the response: a keep-alive connection goes back to the pool once its body has ended.

        A stream's reader stops at ``[DONE]``, often before the body's closing bytes have arrived;
        the connection goes back when they do, or is closed if they take more than a second.
        """
        if self._finished:
            return
        self._finished = True
        if self._done or self._error is not None or not self.keep_alive:
            self._pool._give_back(self._conn, reusable=self._done and self.keep_alive and self._error is None)
            return
        self._release_timer = asyncio.get_running_loop().call_later(1.0, self._abandon)

    def _abandon(self) -> None:
        self._release_timer = None
        self._pool._give_back(self._conn, reusable=False)

    def close(self) -> None:
        """Drop the connection now: the upstream sees it close (a client that left, a cancelled call)."""
        if self._finished:
            return
        self._finished = True
        self._pool._give_back(self._conn, reusable=False)


class _Connection(asyncio.Protocol):
    __slots__ = ("_paused", "closed", "idle_since", "parser", "pool", "response", "transport")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:
            self.abort()  # bytes nobody asked for: this connection's state is unknown
            return
        response._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._on_lost(UpstreamConnectionError(f"The provider's reply was not valid HTTP: {exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None:
            if not response._done and response.status and not self._framed(response):
                response._on_complete()  # a body delimited by the connection closing has ended
            elif not response._received and self.idle_since:
                response._on_lost(_StaleConnection("a kept-alive connection was closed by the provider"))
            else:
                response._on_lost(UpstreamConnectionError("the provider closed the connection mid-reply"))
        self.pool._lost(self)

    def _framed(self, response: UpstreamResponse) -> bool:
        return "content-length" in response.headers or "chunked" in response.headers.get("transfer-encoding", "")

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self.response is not None
        self.response._on_headers(self.parser.get_status_code(), self.parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._on_body(body)

    def on_message_complete(self) -> None:
        assert self.response is not None
        self.response._on_complete()

    # flow control and teardown

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class UpstreamPool:
    """Keep-alive connections to one origin, at most ``limit`` of them open at once."""

    def __init__(
        self,
        origin: URL,
        *,
        limit: int = 10_000,
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if origin.scheme not in ("http", "https") or not origin.host:
            raise ValueError(f"not an http(s) origin: {origin}")
        self.host = origin.host
        self.port = origin.port or (443 if origin.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if origin.scheme == "https" else None
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def post(self, request: bytes) -> UpstreamResponse:
        """Write ``request`` (head and body) and return the response once its headers are in.

        A reused connection that turns out to have been closed by the provider while idle, before
        any byte of the reply, is retried once on a fresh one: the provider never saw the request.
        """
        for attempt in range(2):
            conn = await self._acquire()
            response = UpstreamResponse(self, conn)
            conn.response = response
            assert conn.transport is not None
            conn.transport.write(request)
            try:
                await response._wait_headers()
            except _StaleConnection:
                response.close()
                if attempt == 0:
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise AssertionError("unreachable")

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise UpstreamConnectionError("the relay is shutting down")
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely to be stale
                if not conn.closed and now - conn.idle_since < self._keepalive_s:
                    return conn
                self._discard(conn)
            if len(self._open) < self._limit:
                break
            # Every connection is busy: wait for one to come back or close. Bounded by the caller's
            # own deadline (a stream's first-chunk timeout, a call's timeout), which cancels this.
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        conn = _Connection(self)
        self._open.add(conn)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                )
        except BaseException:
            self._discard(conn)
            raise
        return conn

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _give_back(self, conn: _Connection, *, reusable: bool) -> None:
        conn.response = None
        if reusable and not conn.closed and not self._closed:
            conn.resume()
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)
            self._wake_one()
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.abort()
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _lost(self, conn: _Connection) -> None:
        if conn.response is None:  # idle (or never used): in-use connections are given back by their owner
            if conn in self._idle:
                self._idle.remove(conn)
            self._discard(conn)

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()
        self._open.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectionError("the relay is shutting down"))


def request_head(url: URL, headers: dict[str, Any]) -> bytes:
    """The request line and headers of a POST to ``url``, up to (not including) Content-Length."""
    default_port = 443 if url.scheme == "https" else 80
    host = url.host if url.port in (None, default_port) else f"{url.host}:{url.port}"
    lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        text = f"{name}: {value}"
        if "\r" in text or "\n" in text:
            raise ValueError(f"header {name!r} holds a line break")
        if name.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
            lines.append(text)
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def with_body(head: bytes, body: bytes) -> bytes:
    return b"%bContent-Length: %d\r\n\r\n%b" % (head, len(body), body)
