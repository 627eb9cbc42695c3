"""WebSocket text messages written straight to their connection, from a plain function call.

uvicorn's WebSocket ``send`` is a coroutine, and a socket that serves several requests needs one
writer to keep their frames in order, so through ``send`` each frame goes through a queue to a
sender task: a task wake-up and a coroutine frame per chunk. When the socket can take bytes, a text
message in uvicorn's sans-I/O protocol is no more than the ``websockets`` connection's framing and
one ``transport.write``; ``DirectSocket`` does exactly that, synchronously (several messages in one
write), and leaves everything else (the handshake, close, a socket whose buffer is full) to
``send``. The other way, ``take_messages`` hands the client's messages to the app from the
connection's callback instead of through uvicorn's receive queue.

It only exists for uvicorn's sans-I/O protocol (the one this project runs, ``guarded.py``) once
the handshake is done; anywhere else ``DirectSocket.of`` answers None and the caller keeps using
``send``. uvicorn is pinned, and a test pins the protocol attributes read here.

When the handshake negotiated no extension (no ``permessage-deflate``), a server's text message is
its payload behind a 2, 4 or 10 byte header (RFC 6455 5.2: FIN and the text opcode, the length, no
mask): that header is written here, where ``websockets`` would build a ``Frame`` and serialize it
generically, several times the cost (loadtests/README.md). The server negotiates no extension
(``app/server/serve.py`` declines ``permessage-deflate``); were one negotiated, the connection's own
framing would run, as it must.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import OPEN

from app.transport.guarded import GuardedWebSocketProtocol


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (a server's, with no extension) carrying ``payload``."""
    size = len(payload)
    if size < 126:
        return b"\x81%c%b" % (size, payload)
    if size < 65536:
        return b"\x81\x7e%b%b" % (size.to_bytes(2, "big"), payload)
    return b"\x81\x7f%b%b" % (size.to_bytes(8, "big"), payload)


class DirectSocket:
    __slots__ = ("_conn", "_plain", "_protocol", "_transport", "_writable")

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol
        self._conn = protocol.conn
        self._transport = protocol.transport
        self._writable = protocol.writable
        #: No extension was negotiated: messages are framed here (the handshake fixed that for good).
        self._plain = not protocol.conn.extensions

    @classmethod
    def of(cls, send: Any) -> DirectSocket | None:
        """A DirectSocket for the connection the server's ``send`` belongs to, when that is uvicorn's
        sans-I/O WebSocket protocol with its handshake complete; else None."""
        protocol = getattr(send, "__self__", None)
        if not isinstance(protocol, WebSocketsSansIOProtocol) or not protocol.handshake_complete:
            return None
        return cls(protocol)

    def can_write(self) -> bool:
        """The socket takes a message now: open, not closing, its buffer under the high-water mark.

        Open in the connection's own state too: when the peer's close frame arrives, uvicorn answers
        it and closes the transport, but marks nothing until the transport is lost, a loop turn later;
        a message written in between would be the connection's ``InvalidState`` error, raised in the
        writer of whatever stream was being pushed, as if its provider had failed."""
        protocol = self._protocol
        return (
            self._writable.is_set()
            and self._conn.state is OPEN
            and not protocol.disconnected
            and not protocol.close_sent
            and protocol.initial_response is None
        )

    def write_text(self, text: bytes) -> None:
        """One text message (``text`` is UTF-8); call only when ``can_write``."""
        self.write_texts([text])

    def write_texts(self, texts: list[bytes]) -> None:
        """Text messages (UTF-8), each its own frame, in one write (one system call for the events of
        one provider read, as an SSE response writes them); call only when ``can_write``."""
        conn = self._conn
        if self._plain and conn.state is OPEN:
            self._transport.write(b"".join([text_frame(text) for text in texts]))
            return
        for text in texts:
            conn.send_text(text)  # an extension's framing, or the connection's own error for its state
        self._transport.write(b"".join(conn.data_to_send()))

    def take_messages(self, handler: Callable[[str | bytes], None]) -> bool:
        """From now on each message the client sends goes to ``handler``, called from the
        connection's callback as it is parsed, instead of to the app's receive queue (which then
        only carries the disconnect). Only while that queue is empty, so that no message overtakes
        one queued before it; False (nothing changes) otherwise, or on a protocol without the hook."""
        protocol = self._protocol
        if not isinstance(protocol, GuardedWebSocketProtocol) or not protocol.queue.empty():
            return False
        protocol.on_message = handler
        if protocol.read_paused:  # (uvicorn pauses reading after each queued message until it is taken)
            protocol.read_paused = False
            self._transport.resume_reading()
        return True

    def release_messages(self) -> None:
        """Messages go back to the receive queue (the handler is let go of)."""
        protocol = self._protocol
        if isinstance(protocol, GuardedWebSocketProtocol):
            protocol.on_message = None

    @property
    def close_sent(self) -> bool:
        return bool(self._protocol.close_sent)

    def close(self, code: int, reason: str) -> None:
        """Close now, behind whatever the socket's buffer holds, as uvicorn's ``send`` of
        ``websocket.close`` does except that it does not wait for the buffer to drain first: a
        consumer too slow to read (the reason to close it) would hold that wait until the write
        timeout aborted the connection, and the close code would never reach it."""
        protocol, conn, transport = self._protocol, self._conn, self._transport
        if protocol.close_sent or protocol.disconnected or transport.is_closing():
            return
        protocol.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        conn.send_close(code, reason)
        transport.write(b"".join(conn.data_to_send()))
        protocol.close_sent = True
        if protocol.read_paused:
            protocol.read_paused = False
            transport.resume_reading()
        protocol.close_timer = protocol.loop.call_later(protocol.close_timeout, transport.close)
