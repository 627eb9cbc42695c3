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

HTTP/2 where the upstream offers it: TLS connections offer ``h2`` by ALPN, and an origin that picks
it gets one connection carrying up to its ``MAX_CONCURRENT_STREAMS`` calls at once (framing, HPACK
and flow control by the ``h2`` library, the one httpx uses). Each call's received bytes are
acknowledged as the relay reads them, so a slow reader holds back its own stream, not the others.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import httptools
from yarl import URL

#: Body bytes buffered for a reader that is behind before the socket stops being read.
HIGH_WATER = 256 * 1024
#: An HTTP/2 connection's receive window on top of the protocol's 64 KB.
CONNECTION_WINDOW = 16 * 1024 * 1024


class UpstreamConnectionError(Exception):
    """The connection failed: refused, reset, closed mid-response, or the reply was not HTTP."""


class _StaleConnection(UpstreamConnectionError):
    """The provider never handled the request (a kept-alive connection it had closed, a refused
    HTTP/2 stream): safe to send once more."""


class RequestTemplate:
    """One deployment's POST, prepared once: everything but the body and its length."""

    __slots__ = ("_h1_head", "_h2_headers")

    def __init__(self, url: URL, headers: dict[str, Any]) -> None:
        default_port = 443 if url.scheme == "https" else 80
        host = url.host if url.port in (None, default_port) else f"{url.host}:{url.port}"
        lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {host}"]
        h2_headers = [
            (":method", "POST"),
            (":scheme", url.scheme),
            (":authority", str(host)),
            (":path", url.raw_path_qs),
        ]
        for name, value in headers.items():
            text = f"{name}: {value}"
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r} holds a line break")
            if name.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
                lines.append(text)
                h2_headers.append((name.lower(), str(value)))
        self._h1_head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._h2_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in h2_headers]

    @property
    def head(self) -> bytes:
        """The HTTP/1.1 request line and headers, up to (not including) Content-Length."""
        return self._h1_head

    def h1(self, body: bytes) -> bytes:
        return b"%bContent-Length: %d\r\n\r\n%b" % (self._h1_head, len(body), body)

    def h2(self, body: bytes) -> list[tuple[bytes, bytes]]:
        return [*self._h2_headers, (b"content-length", str(len(body)).encode())]


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
        "stream_id",
    )

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn = conn
        self.stream_id = 0  # an HTTP/2 stream's id; 0 on HTTP/1.1
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
        if self._finished:  # released before the body's end: nobody will read these bytes
            if self.stream_id:
                self._conn.consumed(self.stream_id, len(data))
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER and not self.stream_id:
            self._conn.pause()
        self._wake()

    def _on_complete(self) -> None:
        self._done = True
        if self._release_timer is not None:  # released early: now the connection can go back
            self._release_timer.cancel()
            self._let_go(reusable=self.keep_alive)
            return
        self._wake()

    def _on_lost(self, error: Exception) -> None:
        if self._done:
            return
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._let_go(reusable=False)
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
        if self.stream_id:
            self._conn.consumed(self.stream_id, self._buffered)  # HTTP/2: let the provider send more
        elif self._buffered > HIGH_WATER:
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
        """Done with the response: the connection is free for the next call once the body has ended.

        A stream's reader stops at ``[DONE]``, often before the body's closing bytes (HTTP/1.1's last
        chunk, HTTP/2's END_STREAM) have arrived: the connection is let go when they do, or, if they
        take more than a second, the HTTP/1.1 connection is closed and the HTTP/2 stream reset.
        """
        if self._finished:
            return
        self._finished = True
        if self._done or self._error is not None or not self.keep_alive:
            self._let_go(reusable=self._done and self.keep_alive and self._error is None)
            return
        self._release_timer = asyncio.get_running_loop().call_later(1.0, self._abandon)

    def _abandon(self) -> None:
        self._release_timer = None
        self._let_go(reusable=False)

    def close(self) -> None:
        """Stop now: the provider sees the connection close (HTTP/2: the stream reset) at once."""
        if self._finished:
            return
        self._finished = True
        self._let_go(reusable=False)

    def _let_go(self, *, reusable: bool) -> None:
        if self.stream_id:
            self._conn.end_stream(self)  # resets the stream unless it has ended
        else:
            self._pool._give_back(self._conn, reusable=reusable)


class _H2:
    """The HTTP/2 side of a connection: its streams, their flow control, its GOAWAY."""

    __slots__ = ("conn", "going_away", "h2", "streams", "window_open")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=False)
        )
        self.streams: dict[int, UpstreamResponse] = {}
        self.going_away = False
        self.window_open = asyncio.Event()
        self.h2.initiate_connection()
        # Each stream keeps the default 64 KB window (a slow reader holds back its own stream); the
        # connection's window is made large so one such stream cannot stall all the others.
        self.h2.increment_flow_control_window(CONNECTION_WINDOW)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.conn.transport is not None and not self.conn.closed:
            self.conn.transport.write(data)

    def has_room(self) -> bool:
        return not self.going_away and len(self.streams) < self.h2.remote_settings.max_concurrent_streams

    async def send(self, response: UpstreamResponse, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        try:
            stream_id = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError as exc:
            self.going_away = True
            raise _StaleConnection("the connection has used up its stream ids") from exc
        response.stream_id = stream_id
        self.streams[stream_id] = response
        self.h2.send_headers(stream_id, headers, end_stream=not body)
        self.flush()
        view = memoryview(body)
        while view:
            if response._error is not None:
                raise response._error
            room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if room <= 0:
                # The provider's flow-control window is full: wait for it to open (bounded by the
                # caller's own deadline, which cancels this).
                self.window_open.clear()
                await self.window_open.wait()
                continue
            self.h2.send_data(stream_id, bytes(view[:room]), end_stream=room >= len(view))
            view = view[room:]
            self.flush()

    def received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.fail_all(UpstreamConnectionError(f"The provider broke the HTTP/2 protocol: {exc}"))
            self.conn.abort()
            return
        for event in events:
            response = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and response is not None:
                response._received = True
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                status = int(headers.pop(":status", "0"))
                response.headers.update(headers)
                response._on_headers(status, True)
            elif isinstance(event, h2.events.DataReceived):
                padding = event.flow_controlled_length - len(event.data)
                if response is None:  # a stream the relay has let go: keep the connection's window open
                    self.consumed(event.stream_id, event.flow_controlled_length)
                    continue
                if padding:
                    self.consumed(event.stream_id, padding)
                response._received = True
                if event.data:
                    response._on_body(event.data)
            elif isinstance(event, h2.events.StreamEnded) and response is not None:
                self.streams.pop(event.stream_id, None)
                response._on_complete()
            elif isinstance(event, h2.events.StreamReset) and response is not None:
                self.streams.pop(event.stream_id, None)
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM and not response._received
                error_type = _StaleConnection if refused else UpstreamConnectionError
                response._on_lost(error_type(f"The provider reset the stream ({event.error_code!r})"))
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_open.set()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.going_away = True
                last = event.last_stream_id if event.last_stream_id is not None else 0
                for stream_id, waiting in list(self.streams.items()):
                    if stream_id > last:  # never processed: safe to send again elsewhere
                        self.streams.pop(stream_id)
                        waiting._on_lost(_StaleConnection("the provider is closing the connection (GOAWAY)"))
                self.window_open.set()
        self.flush()
        if self.going_away and not self.streams:
            self.conn.abort()

    def consumed(self, stream_id: int, nbytes: int) -> None:
        """Acknowledge ``nbytes`` read from a stream, so that the provider may send that much more."""
        if not nbytes or self.conn.closed:
            return
        try:
            self.h2.acknowledge_received_data(nbytes, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return  # the stream is gone; nothing left to let through
        self.flush()

    def end(self, response: UpstreamResponse) -> None:
        """The relay is done with a stream: reset it unless it had ended."""
        stream_id = response.stream_id
        if self.streams.pop(stream_id, None) is not None and not response._done:
            try:
                self.h2.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            self.flush()
        self.conn.pool._stream_ended()
        if self.going_away and not self.streams:
            self.conn.abort()

    def fail_all(self, error: Exception) -> None:
        streams, self.streams = self.streams, {}
        for response in streams.values():
            response._on_lost(error)
        self.window_open.set()


class _Connection(asyncio.Protocol):
    __slots__ = ("_paused", "closed", "h2", "idle_since", "parser", "pool", "response", "transport")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.h2: _H2 | None = None
        self.closed = False
        self.idle_since = 0.0
        self._paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self.h2 = _H2(self)

    def data_received(self, data: bytes) -> None:
        if self.h2 is not None:
            self.h2.received(data)
            return
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
        if self.h2 is not None:
            self.h2.fail_all(UpstreamConnectionError("the provider closed the connection mid-reply"))
            self.pool._lost(self)
            return
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

    # flow control, HTTP/2 streams and teardown

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def consumed(self, stream_id: int, nbytes: int) -> None:
        if self.h2 is not None:
            self.h2.consumed(stream_id, nbytes)

    def end_stream(self, response: UpstreamResponse) -> None:
        if self.h2 is not None:
            self.h2.end(response)

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


class UpstreamPool:
    """Connections to one origin, at most ``limit`` open at once: kept-alive HTTP/1.1 connections
    carry one call at a time, an HTTP/2 connection as many as the provider allows."""

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
        self._ssl: ssl.SSLContext | None = None
        if origin.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
            self._ssl.set_alpn_protocols(["h2", "http/1.1"])
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._h2: list[_Connection] = []  # HTTP/2 connections, shared by their calls
        self._speaks_h2: bool | None = None if self._ssl else False  # learnt from the first TLS connection
        self._connecting: asyncio.Future[None] | None = None  # a TLS connect others may share if it is h2
        self._open: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def post(self, request: RequestTemplate, body: bytes) -> UpstreamResponse:
        """Send ``request`` with ``body`` and return the response once its headers are in.

        A call the provider never handled (a kept-alive connection it had closed, before any byte of
        the reply; an HTTP/2 stream refused or cut by GOAWAY) is sent once more, on a fresh connection.
        """
        for attempt in range(2):
            conn = await self._acquire()
            response = UpstreamResponse(self, conn)
            try:
                if conn.h2 is not None:
                    await conn.h2.send(response, request.h2(body), body)
                else:
                    conn.response = response
                    assert conn.transport is not None
                    conn.transport.write(request.h1(body))
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
            for shared in self._h2:
                if not shared.closed and shared.h2 is not None and shared.h2.has_room():
                    return shared
            now = loop.time()
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely to be stale
                if not conn.closed and now - conn.idle_since < self._keepalive_s:
                    return conn
                self._discard(conn)
            if self._connecting is not None and self._speaks_h2 is not False:
                # A connection that may turn out to be HTTP/2 is being opened: wait for it rather
                # than open one per waiting call (an HTTP/2 origin gets one connection, not a burst).
                await asyncio.shield(self._connecting)
                continue
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
        connecting = None
        if self._speaks_h2 is not False:
            connecting = self._connecting = loop.create_future()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await loop.create_connection(
                    lambda: conn, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
                )
        except BaseException:
            self._discard(conn)
            raise
        finally:
            if connecting is not None:
                self._connecting = None
                connecting.set_result(None)
        if self._ssl is not None:
            self._speaks_h2 = conn.h2 is not None
        if conn.h2 is not None:
            self._h2.append(conn)
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

    def _stream_ended(self) -> None:
        self._wake_one()  # an HTTP/2 connection has room for one more call

    def _discard(self, conn: _Connection) -> None:
        conn.abort()
        if conn in self._h2:
            self._h2.remove(conn)
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _lost(self, conn: _Connection) -> None:
        if conn.h2 is not None or conn.response is None:
            # HTTP/2, or idle HTTP/1.1: in-use HTTP/1.1 connections are given back by their owner
            if conn in self._idle:
                self._idle.remove(conn)
            self._discard(conn)

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._open):
            if conn.h2 is not None:
                conn.h2.fail_all(UpstreamConnectionError("the relay is shutting down"))
            conn.abort()
        self._idle.clear()
        self._h2.clear()
        self._open.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectionError("the relay is shutting down"))
