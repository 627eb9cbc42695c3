"""Connections to one origin: kept-alive HTTP/1.1 connections carry one call at a time, an HTTP/2
connection as many as the provider allows; at most ``limit`` connections open at once.

Idle connections are closed by one timer per pool after ``keepalive_s`` without a call (a
``call_at`` sweep, re-armed while idle connections remain), not only when the next call finds them
expired: a burst would otherwise leave its connections open, and the provider's sockets held, for
as long as the relay runs.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from yarl import URL

from app.providers.egress import EgressSettings
from app.providers.upstream.connect import client_ssl_context, open_connection
from app.providers.upstream.connection import ACTIVE, CLOSED, IDLE, Connection
from app.providers.upstream.errors import StaleConnection, UpstreamConnectionError
from app.providers.upstream.request import RequestTemplate
from app.providers.upstream.response import UpstreamResponse

#: The sweep runs at most this late after a connection's expiry (a quarter of a short keep-alive),
#: so that connections that went idle together are closed by one timer callback, not one each.
SWEEP_SLACK_S = 1.0


class UpstreamPool:
    """Keep-alive connections to one origin, at most ``limit`` open at once."""

    def __init__(
        self,
        origin: URL,
        *,
        limit: int = 10_000,
        keepalive_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        egress: EgressSettings | None = None,
    ) -> None:
        if origin.scheme not in ("http", "https") or not origin.host:
            raise ValueError(f"not an http(s) origin: {origin}")
        self.host = origin.host
        self.port = origin.port or (443 if origin.scheme == "https" else 80)
        # HTTPS_PROXY / HTTP_PROXY / NO_PROXY and SSL_CERT_FILE, as httpx and the OpenAI SDK honour them.
        self._proxy = egress.proxy_for(origin.scheme, self.host, self.port) if egress is not None else None
        if ssl_context is None and egress is not None and origin.scheme == "https":
            ssl_context = egress.ssl_context()
        self._ssl = client_ssl_context(ssl_context) if origin.scheme == "https" else None
        self._limit = limit
        self._keepalive_s = keepalive_s
        self._sweep_slack_s = min(SWEEP_SLACK_S, keepalive_s / 4)
        self._connect_timeout_s = connect_timeout_s
        self._open: set[Connection] = set()
        self._idle: dict[Connection, None] = {}  # idle HTTP/1.1 connections, oldest first
        self._h2: list[Connection] = []  # HTTP/2 connections, shared by their calls (idle ones too)
        self._speaks_h2: bool | None = None if self._ssl else False  # learnt from the first TLS connection
        self._connecting: asyncio.Future[None] | None = None  # a TLS connect others may share if it is h2
        self._pending = 0  # connects in progress: they count against the limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return len(self._idle) + sum(1 for conn in self._h2 if conn.state is IDLE)

    async def post(self, request: RequestTemplate, body: bytes, *, until_body: bool = False) -> UpstreamResponse:
        """Send ``request`` with ``body`` and return the response once its headers are in; with
        ``until_body`` a 200 is returned once its first body bytes are in too (or its body ended).

        A call the provider never handled (a kept-alive connection it had closed, before any byte of
        the reply; an HTTP/2 stream refused or cut by GOAWAY) is sent once more, on a fresh connection.
        """
        for attempt in range(2):
            conn = await self._checkout()
            response = UpstreamResponse(conn)
            response.wake_on_head = not until_body
            try:
                await conn.send(response, request, body)
                await response._wait_headers()
            except StaleConnection:
                response.close()
                if attempt == 0:
                    continue
                raise
            except BaseException:
                response.close()
                raise
            return response
        raise AssertionError("unreachable")

    # -- connections out and back -----------------------------------------------------------------

    async def _checkout(self) -> Connection:
        # Each connection's clock is its own loop's (Connection.loop): the usual call, a kept-alive
        # connection, asks no one for the running loop.
        while True:
            if self._closed:
                raise UpstreamConnectionError("the relay is shutting down")
            for shared in self._h2:
                if shared.has_room() and not shared.expired(shared.loop.time(), self._keepalive_s):
                    return shared
            while self._idle:
                conn, _ = self._idle.popitem()  # the most recently used: the least likely to be stale
                if not conn.expired(conn.loop.time(), self._keepalive_s):
                    conn.state = ACTIVE
                    return conn
                conn.close()  # the sweep has not come round to it yet
            if self._connecting is not None and self._speaks_h2 is not False:
                # A connection that may turn out to be HTTP/2 is being opened: wait for it rather
                # than open one per waiting call (an HTTP/2 origin gets one connection, not a burst).
                await asyncio.shield(self._connecting)
                continue
            if len(self._open) + self._pending < self._limit:
                return await self._connect()
            # Every connection is busy: wait for one to come back or close. Bounded by the caller's
            # own deadline (a stream's first-chunk timeout, a call's timeout), which cancels this.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        self._pending += 1
        connecting = None
        if self._speaks_h2 is not False:
            connecting = self._connecting = loop.create_future()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                conn = await open_connection(self, self.host, self.port, self._ssl, self._proxy)
        except BaseException:
            self._wake_one()  # its slot is free again
            raise
        finally:
            self._pending -= 1
            if connecting is not None:
                self._connecting = None
                connecting.set_result(None)
        if self._ssl is not None:
            self._speaks_h2 = conn.http2
        if self._closed:
            conn.close(UpstreamConnectionError("the relay is shutting down"))
        elif conn.state is not CLOSED:
            self._open.add(conn)
            if conn.http2:
                self._h2.append(conn)
        return conn  # a connection lost already fails its first send as stale: it is retried once

    def connection_changed(self, conn: Connection) -> None:
        """A connection's listener: it turned IDLE, closed, or (HTTP/2) has room for one more call."""
        if conn.state is CLOSED:
            self._forget(conn)
        elif conn.state is IDLE:
            self._checkin(conn)
        else:
            self._wake_one()  # an HTTP/2 connection has room for one more call

    def _checkin(self, conn: Connection) -> None:
        """``conn`` carries nothing now and is kept alive (HTTP/1.1: back in the idle stack)."""
        conn.idle_since = conn.loop.time()
        if not conn.http2:
            self._idle[conn] = None
        self._wake_one()
        if self._sweep_timer is None:
            self._arm_sweep(conn.idle_since)

    def _forget(self, conn: Connection) -> None:
        """``conn`` has closed (either side): it no longer counts, and its slot is free."""
        self._open.discard(conn)
        self._idle.pop(conn, None)
        if conn.http2 and conn in self._h2:
            self._h2.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- keep-alive expiry --------------------------------------------------------------------------

    def _arm_sweep(self, idle_since: float) -> None:
        when = idle_since + self._keepalive_s + self._sweep_slack_s
        self._sweep_timer = asyncio.get_running_loop().call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Close every connection idle for ``keepalive_s`` or more; re-arm for the oldest one left."""
        self._sweep_timer = None
        now = asyncio.get_running_loop().time()
        expired = []
        for conn in self._idle:  # oldest first: stop at the first one still within its keep-alive
            if not conn.expired(now, self._keepalive_s):
                break
            expired.append(conn)
        expired += [conn for conn in self._h2 if conn.expired(now, self._keepalive_s)]
        for conn in expired:
            conn.close()
        oldest = [conn.idle_since for conn in self._h2 if conn.state is IDLE]
        if self._idle:
            oldest.append(next(iter(self._idle)).idle_since)
        if oldest and not self._closed:
            self._arm_sweep(min(oldest))

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for conn in list(self._open):
            conn.close(UpstreamConnectionError("the relay is shutting down"))
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamConnectionError("the relay is shutting down"))
