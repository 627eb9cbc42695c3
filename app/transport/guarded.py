"""uvicorn's HTTP and WebSocket protocols with the bounds a public server needs.

uvicorn bounds none of these: a connection that never sends a byte, or sends its headers one byte a
second (slowloris), or stops sending its body, stays open for ever; a client that stops reading
holds its response (and the provider call behind it) for ever; and connections are accepted until
file descriptors run out, when every other request starts failing with nothing logged. Here:

- ``header_timeout_s``: from the connection's first moment (or a kept-alive request's first byte)
  to the end of the request's headers;
- ``body_timeout_s``: longest pause while a request body arrives (never counted while the app has
  paused reading);
- ``keepalive_s``: idle time between requests (uvicorn's own ``timeout_keep_alive``);
- ``max_connections``: at the cap, the connection idle the longest (no request in progress) is
  closed to make room; only when every connection is busy does a new one get one 503 and close,
  before it can use the descriptors that open streams (and their provider connections) need;
- ``write_timeout_s``: longest time the socket's send buffer may stay full; then the connection is
  aborted, which the app sees as the client leaving (the stream's provider call is cancelled);
- a request's head is bounded in size while it is parsed (``head_limits.py``: 414, 431), an
  HTTP/1.1 request needs its ``Host``, and the parser's refusals are the contract's JSON errors.

Every timer is armed per phase, never per chunk: the hot path is untouched. Closures are logged,
at most one line per kind every ``LOG_EVERY_S`` seconds, with counts, so a flood cannot flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Final

import httptools
import msgspec
import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.transport import head_limits
from app.transport.disconnect import DISCONNECT_HOOK, DisconnectHook
from app.transport.head_limits import HeadRefused
from app.transport.head_write import HeadHeldTransport

logger = structlog.get_logger("chat.connections")

LOG_EVERY_S: Final = 10.0
_LINGER_ZERO: Final = struct.pack("ii", 1, 0)


class ConnectionLimits(msgspec.Struct, frozen=True):
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    max_connections: int = 4096


class GatewayConfig(uvicorn.Config):
    """uvicorn's Config plus the limits the guarded protocols read (it is what they are handed)."""

    def __init__(self, app: Any, *, connection_limits: ConnectionLimits, **kwargs: Any) -> None:
        kwargs.setdefault("http", GuardedHttpProtocol)
        kwargs.setdefault("ws", GuardedWebSocketProtocol)
        super().__init__(app, **kwargs)
        self.connection_limits = connection_limits


class _ClosureLog:
    """Counts closures per reason and logs them at most once per period, with their count.

    The first closure of a quiet period is logged at once (``count=1``); those that follow within
    ``LOG_EVERY_S`` are counted, and one timer per reason logs their count when the period ends, so
    a burst of twenty is two lines whose counts add up to twenty, and none is left uncounted
    because nothing came after it.
    """

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._fields: dict[str, dict[str, Any]] = {}
        self._last: dict[str, float] = {}
        self._flush: dict[str, asyncio.TimerHandle] = {}

    def closed(self, reason: str, **fields: Any) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1
        self._fields[reason] = fields
        now = time.monotonic()
        wait = self._last.get(reason, -LOG_EVERY_S) + LOG_EVERY_S - now
        if wait <= 0:
            self._emit(reason, now)
        elif reason not in self._flush:
            self._flush[reason] = asyncio.get_running_loop().call_later(wait, self._flushed, reason)

    def _flushed(self, reason: str) -> None:
        self._flush.pop(reason, None)
        if self._counts.get(reason):
            self._emit(reason, time.monotonic())

    def _emit(self, reason: str, now: float) -> None:
        self._last[reason] = now
        count, self._counts[reason] = self._counts[reason], 0
        logger.warning("connection_closed", reason=reason, count=count, **self._fields.pop(reason, {}))


def _limits(config: Any) -> ConnectionLimits:
    limits = getattr(config, "connection_limits", None)
    return limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()


def _closure_log(server_state: Any) -> _ClosureLog:
    # One per server (shared by its connections), kept on uvicorn's server state object.
    log = getattr(server_state, "chat_closure_log", None)
    if log is None:
        log = _ClosureLog()
        server_state.chat_closure_log = log
    return log


def _idle_connections(server_state: Any) -> dict[Any, None]:
    """The server's connections waiting for a request, oldest first (a dict keeps insertion order)."""
    idle = getattr(server_state, "chat_idle_connections", None)
    if idle is None:
        idle = {}
        server_state.chat_idle_connections = idle
    return idle


_OVERLOADED: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 1\r\nx-request-id: %b\r\ncontent-length: %d\r\n\r\n%b"
)
_OVERLOADED_BODY: Final = (
    b'{"error":{"message":"The server has too many open connections; try again shortly.",'
    b'"type":"server_error","param":null,"code":"too_many_connections"}}'
)


class _WriteWatch:
    """Aborts a transport whose send buffer stays full for ``timeout_s`` (the peer stopped reading)."""

    __slots__ = ("_log", "_loop", "_timeout", "_timer", "_transport")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, log: _ClosureLog) -> None:
        self._loop = loop
        self._timeout = timeout
        self._log = log
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    def paused(self, transport: asyncio.BaseTransport) -> None:
        if self._timer is None:
            self._transport = transport
            self._timer = self._loop.call_later(self._timeout, self._expired)

    def resumed(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is not None and not transport.is_closing():
            self._log.closed("write_timeout", timeout_s=self._timeout)
            reset(transport)


def reset(transport: asyncio.BaseTransport) -> None:
    """Drop the connection with a TCP RST: the peer learns at once that it was dropped.

    ``abort`` alone closes the socket, and the kernel then goes on delivering the megabytes queued in
    its send buffer to a peer that reads slowly, for minutes, before the FIN: the peer never hears
    that it was dropped. A zero linger time makes the close discard them and send a reset.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    transport.abort()  # type: ignore[attr-defined]


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = _limits(config)
        self._log = _closure_log(server_state)
        self._phase_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self._writes = _WriteWatch(self.loop, self._limits.write_timeout_s, self._log)
        self._refused = False
        self._idle = _idle_connections(server_state)
        # The current request's head (head_limits.py): still arriving, bytes fed so far, header bytes.
        self._in_head = True
        self._head_fed = 0
        self._header_bytes = 0
        self._head_error: HeadRefused | None = None
        self._hosts = 0  # Host headers of the current head
        # Where the current request is, for the deadline armed after each read (``_arm_phase``).
        self._head_started = False
        self._in_body = False
        self._lingering = False  # a refused head was answered; what still arrives is dropped
        #: The requests in progress (or queued behind a pipelined one) on this connection, each with the
        #: hook its disconnect watch listens on (disconnect.py).
        self._hooks: dict[Any, DisconnectHook] = {}

    # -- admission --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._limits.max_connections and not self._evict_idle():
            self._refused = True
            self.transport = transport
            request_id = head_limits.valid_request_id(None).encode()
            transport.write(_OVERLOADED % (request_id, len(_OVERLOADED_BODY), _OVERLOADED_BODY))
            transport.close()
            self._log.closed("too_many_connections", limit=self._limits.max_connections)
            return
        super().connection_made(transport)
        self._idle[self] = None
        self._arm(self._limits.header_timeout_s, self._header_timeout)

    def _evict_idle(self) -> bool:
        """Make room by closing the connection idle the longest (waiting for a request), as nginx
        reuses kept-alive connections: idle sockets cannot lock out a client with a request to make."""
        while self._idle:
            victim = next(iter(self._idle))
            del self._idle[victim]
            if not victim.transport.is_closing():
                victim.transport.close()
                self._log.closed("evicted_idle", limit=self._limits.max_connections)
                return True
        return False

    def data_received(self, data: bytes) -> None:
        if self._refused or self._lingering:
            return
        self._last_read = self.loop.time()
        if not self._in_head:
            self._feed(data)
        elif self._head_fed + len(data) <= head_limits.MAX_HEAD_BYTES:
            self._head_fed += len(data)
            self._feed(data)
        else:
            self._feed_bounded(memoryview(data))
        if self._phase_timer is None:
            self._arm_phase()

    def _feed_bounded(self, view: memoryview) -> None:
        """Feed ``view`` without letting one request's head past MAX_HEAD_BYTES into the parser."""
        while view:
            if self._in_head:
                room = head_limits.MAX_HEAD_BYTES - self._head_fed
                if room <= 0:
                    self._refuse_head(head_limits.headers_too_large())
                    return
                part, view = view[:room], view[room:]
                self._head_fed += len(part)
            else:
                part, view = view, view[:0]
            self._feed(part)
            if self.parser is None or self._lingering or self.transport.is_closing():
                return  # upgraded to a WebSocket, or refused

    def _feed(self, data: bytes | memoryview) -> None:
        # uvicorn's data_received, with the parser's refusals answered by _refuse_head.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            error, self._head_error = self._head_error, None
            self._refuse_head(error or head_limits.bad_request())
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- the request head's bounds (head_limits.py) ---------------------------------------------

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > head_limits.MAX_REQUEST_LINE_BYTES:
            self._head_error = head_limits.uri_too_long()
            raise self._head_error
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_bytes > head_limits.MAX_HEADER_BYTES or len(self.headers) >= head_limits.MAX_HEADER_LINES:
            self._head_error = head_limits.headers_too_large()
            raise self._head_error
        # uvicorn's on_header, in this frame (a call per header of every request), counting Hosts.
        name = name.lower()
        if name == b"host":
            self._hosts += 1
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def send_400_response(self, msg: str) -> None:
        self._refuse_head(head_limits.bad_request())

    def _refuse_head(self, refusal: HeadRefused) -> None:
        """Answer a refused head with the contract's error, then drop what still arrives for a moment
        (so that a client still sending can read the answer) and close."""
        self._disarm()
        self._idle.pop(self, None)
        self._lingering = True
        self._log.closed(refusal.code, status=refusal.status)
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a response still being written: no room for an answer.
            self.transport.abort()
            return
        self.transport.write(head_limits.reply(refusal, head_limits.request_id_of(self.headers)))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(head_limits.LINGER_S, self._linger_over)

    def _linger_over(self) -> None:
        self._phase_timer = None
        self.transport.close()

    # -- per-phase deadlines ----------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        if self._phase_timer is not None:
            self._phase_timer.cancel()
        self._phase_timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._phase_timer is not None:
            self._phase_timer.cancel()
            self._phase_timer = None

    def _arm_phase(self) -> None:
        """After a read, the deadline of the phase the request is left in: its head's or its body's.
        Armed here rather than from the parser's callbacks, so that a request whose head and body
        came in one read (almost every one) arms and cancels no timer at all."""
        if self.parser is None or self._lingering or self.transport.is_closing():
            return  # upgraded to a WebSocket, refused, or closing
        if self._head_started:
            self._arm(self._limits.header_timeout_s, self._header_timeout)
        elif self._in_body:
            self._arm(self._limits.body_timeout_s, self._body_timeout)

    def _header_timeout(self) -> None:
        self._phase_timer = None
        if not self.transport.is_closing():
            self._log.closed("header_timeout", timeout_s=self._limits.header_timeout_s)
            self.transport.close()

    def _body_timeout(self) -> None:
        self._phase_timer = None
        if self.transport.is_closing():
            return
        quiet = self.loop.time() - self._last_read
        if self.flow.read_paused or quiet < self._limits.body_timeout_s:
            # The app has not read what arrived (not the client's fault), or bytes came meanwhile.
            self._arm(max(0.05, self._limits.body_timeout_s - quiet), self._body_timeout)
            return
        self._log.closed("body_timeout", timeout_s=self._limits.body_timeout_s)
        self.transport.close()

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._hosts = 0
        self._head_started = True  # a kept-alive connection's next request: its headers' deadline
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._hosts != 1 and self.parser.get_http_version() == "1.1":
            self._head_error = head_limits.bad_request("An HTTP/1.1 request must carry exactly one Host header.")
            raise self._head_error
        self._in_head = False
        self._head_started = False
        self._disarm()
        self._idle.pop(self, None)  # a request in progress is never evicted
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._in_body = True  # its deadline is armed after this read, if the body is not all here
            # The cycle uvicorn just made (run now or queued behind a pipelined one) has not written yet.
            cycle = self.cycle
            cycle.transport = HeadHeldTransport(self.transport, self.loop)  # type: ignore[assignment]
            hook = cycle.scope["state"][DISCONNECT_HOOK] = DisconnectHook(self.loop)
            self._hooks[cycle] = hook

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        # What follows is the next request's head. (Of a read that also ends this request, the part
        # after its end is not counted: at most one read, which asyncio caps at 256 KiB.)
        self._in_head = True
        self._head_fed = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        for cycle in [c for c in self._hooks if c.response_complete]:
            del self._hooks[cycle]
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._idle[self] = None  # kept alive, waiting for its next request: evictable again

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        self._writes.resumed()
        super().handle_websocket_upgrade()
        # The WebSocket protocol owns the transport now and this one gets no more callbacks (not even
        # connection_lost, where uvicorn drops its parser): the parser holds our bound callbacks, so
        # without this the pair would wait, as a cycle, for the garbage collector.
        self.parser = None  # type: ignore[assignment]  # as uvicorn does in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._writes.resumed()
        self._idle.pop(self, None)
        if self._refused:
            return
        super().connection_lost(exc)
        hooks = list(self._hooks.values())
        self._hooks.clear()
        for hook in hooks:  # the requests still in progress on this connection: their clients left
            hook.fire()

    # -- clients that stop reading ----------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writes.paused(self.transport)

    def resume_writing(self) -> None:
        self._writes.resumed()
        super().resume_writing()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the write timeout (pings already drop dead peers),
    whose messages the app may take from the connection's callback instead of its receive queue."""

    def __init__(self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._log = _closure_log(server_state)
        self._writes = _WriteWatch(self.loop, _limits(config).write_timeout_s, self._log)
        #: Takes each message (text as str, binary as bytes) as it is parsed, when the app asked for
        #: that (``DirectSocket.take_messages``); only the disconnect still goes through the queue.
        self.on_message: Callable[[str | bytes], None] | None = None

    def send_receive_event_to_app(self) -> None:
        """uvicorn's, except for a text message that is not UTF-8: closed with 1007 as there, but
        counted in the throttled closure log instead of one traceback per message (a client sending
        them in a loop would otherwise write the log as fast as it can connect); and a message goes
        to ``on_message`` when one is set, with no queue, no task wake-up and no paused reading."""
        if self.close_sent or (self.curr_msg_data_type != "text" and self.on_message is None):
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        on_message = self.on_message
        if self.curr_msg_data_type != "text":
            if on_message is not None:  # (else uvicorn's, above)
                on_message(data)
            return
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self._log.closed("ws_invalid_utf8")
            self.conn.send_close(1007)
            self.handle_parser_exception()
            return
        if on_message is not None:
            on_message(text)
            return
        self.queue.put_nowait({"type": "websocket.receive", "text": text})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def pause_writing(self) -> None:
        super().pause_writing()
        self._writes.paused(self.transport)

    def resume_writing(self) -> None:
        self._writes.resumed()
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._writes.resumed()
        self.on_message = None  # the app's handler holds its session, which holds this connection
        super().connection_lost(exc)
