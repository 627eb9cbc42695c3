"""One call's response: its state, and its body handed from the connection to the relay as it arrives."""

from __future__ import annotations

import asyncio
import copy
import enum
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.providers.upstream.connection import Connection

#: Body bytes buffered for a reader that is behind before the connection stops reading (HTTP/1.1;
#: an HTTP/2 stream is held back by its flow-control window instead).
HIGH_WATER = 256 * 1024
#: How long a response released before its body's last bytes waits for them before its connection
#: (HTTP/2: its stream) is dropped.
DRAIN_S = 1.0


class BodySink(Protocol):
    """Takes a response's body as the connection receives it (``UpstreamResponse.deliver``)."""

    def body(self, data: bytes) -> bool:
        """Body bytes; False to stop the provider until ``UpstreamResponse.resume``."""
        ...

    def complete(self) -> None:
        """The body has ended."""
        ...

    def lost(self, error: Exception) -> None:
        """The connection (or HTTP/2 stream) broke before the body's end."""
        ...


class ResponseState(enum.Enum):
    """Where a response is. One state instead of flags: every event below is judged by it alone."""

    SENT = "sent"  # request written, no byte of reply yet: if the connection dies now, the provider never saw it
    RECEIVING = "receiving"  # the reply is arriving
    COMPLETE = "complete"  # the whole body has arrived (the reader may still be reading the buffer)
    FAILED = "failed"  # the connection or stream broke before the body's end; ``error`` says how
    DRAINING = "draining"  # released before the body's end: its last bytes are awaited for DRAIN_S
    DONE = "done"  # let go: the connection is no longer this response's


# Module-level aliases: the per-chunk paths compare against them without an attribute lookup.
_SENT, _RECEIVING, _COMPLETE = ResponseState.SENT, ResponseState.RECEIVING, ResponseState.COMPLETE
_FAILED, _DRAINING, _DONE = ResponseState.FAILED, ResponseState.DRAINING, ResponseState.DONE


class UpstreamResponse:
    """One response: status and headers once they are in, then the body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_drain_timer",
        "_loop",
        "_sink",
        "_sink_paused",
        "_waiter",
        "error",
        "headers",
        "keep_alive",
        "state",
        "status",
        "stream_id",
        "wake_on_head",
    )

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._loop = conn.loop  # its connection's, taken once per connection (Connection.loop)
        self.state = _SENT
        self.stream_id = 0  # an HTTP/2 stream's id; 0 on HTTP/1.1
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.error: Exception | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._sink: BodySink | None = None
        self._sink_paused = False
        #: Whether a 200's headers wake the reader. A stream's reader wants its first bytes, which
        #: come later (a provider's time to first token): it is woken once, by them, not twice.
        self.wake_on_head = True

    # -- fed by the connection --------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_headers(self, status: int, keep_alive: bool) -> None:
        self.status = status
        self.keep_alive = keep_alive
        if self.state is _SENT:
            self.state = _RECEIVING
        if self.wake_on_head or status != 200:
            self._wake()

    def _on_body(self, data: bytes) -> None:
        if self.state is _DRAINING:  # nobody will read these bytes; HTTP/2 must still acknowledge them
            self._conn.consumed(self, len(data))
            return
        sink = self._sink
        if sink is not None:
            # Unacknowledged until the sink has taken them with room to spare.
            self._buffered += len(data)
            if self._sink_paused:
                self._chunks.append(data)  # kept for ``resume``, in order
            elif sink.body(data):
                self._conn.consumed(self, self._buffered)
                self._buffered = 0
                return
            else:
                self._sink_paused = True
            # The sink's reader is behind: hold the provider (HTTP/1.1: stop reading; HTTP/2: these
            # bytes stay unacknowledged and close the stream's window) until ``resume``.
            self._conn.backlogged()
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self._conn.backlogged()
        self._wake()

    def _on_complete(self) -> None:
        state = self.state
        if state is _DRAINING:  # released early: now the connection can go back
            self._stop_draining()
            self._let_go(reusable=self.keep_alive)
        elif state is _SENT or state is _RECEIVING:
            self.state = _COMPLETE
            if self._sink is not None:
                if not self._sink_paused:  # else the end follows what is kept, in ``resume``
                    self._sink.complete()
            else:
                self._wake()

    def _on_lost(self, error: Exception) -> None:
        state = self.state
        if state is _DRAINING:
            self._stop_draining()
            self._let_go(reusable=False)
        elif state is _SENT or state is _RECEIVING:
            self.state = _FAILED
            self.error = error
            if self._sink is not None:
                if not self._sink_paused:
                    self._sink.lost(error)
            else:
                self._wake()

    # -- read by the relay ------------------------------------------------------------------------

    def _failure(self) -> Exception:
        """What to raise for the failure: a copy of ``error``. Raising the kept object itself would
        give it a traceback whose frames hold this response, which holds it: a cycle that keeps the
        connection, the relay stream and the request alive until the collector finds it."""
        assert self.error is not None
        return copy.copy(self.error)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _wait_headers(self) -> None:
        while not self.status and (self.state is _SENT or self.state is _RECEIVING):
            await self._wait()
        if self.state is _FAILED and not self.status:
            # Failed before a byte of the reply. Once its head is in, a failure is the body's: its
            # reader gets it (a stream that broke off, not a provider that could not be reached).
            raise self._failure()

    async def read_some(self) -> bytes:
        """The body bytes that have arrived (waiting for some if none have); ``b""`` at the end."""
        while not self._chunks:
            state = self.state
            if state is _FAILED:
                raise self._failure()
            if state is not _SENT and state is not _RECEIVING:  # complete, or let go
                return b""
            await self._wait()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._conn.consumed(self, self._buffered)  # HTTP/2: the provider may send that much more
        self._buffered = 0
        return data

    def deliver(self, sink: BodySink, *, full: bool = False) -> None:
        """From now on hand the body to ``sink`` from the connection's callbacks, as it arrives: no
        buffer and no reader to wake. What has arrived already goes to it at once, then the end if
        the body has ended; with ``full`` (the sink cannot take more yet) only from ``resume`` on."""
        self._sink = sink
        self._sink_paused = full
        if full:
            self._conn.backlogged()
            return
        kept = b"".join(self._chunks)
        self._chunks.clear()
        taken = sink.body(kept) if kept else True
        state = self.state
        if state is _COMPLETE:
            sink.complete()
        elif state is _FAILED:
            assert self.error is not None
            sink.lost(self.error)
        elif state is _SENT or state is _RECEIVING:
            if taken:
                self._conn.consumed(self, self._buffered)
                self._buffered = 0
            else:
                self._sink_paused = True
                self._conn.backlogged()

    def resume(self) -> None:
        """The sink takes bytes again: what was kept goes to it, and the provider may send again."""
        if self._sink is not None and self._sink_paused:
            self.deliver(self._sink)  # not full: the sink says so by what it answers

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

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop its connection runs on."""
        return self._loop

    def release(self) -> None:
        """Done with the response: the connection is free for the next call once the body has ended.

        A stream's reader stops at ``[DONE]``, often before the body's closing bytes (HTTP/1.1's last
        chunk, HTTP/2's END_STREAM) have arrived: the connection is let go when they do, or, if they
        take more than DRAIN_S, the HTTP/1.1 connection is closed and the HTTP/2 stream reset.
        """
        state = self.state
        if state is _COMPLETE:
            self._let_go(reusable=self.keep_alive)
        elif state is _FAILED or ((state is _SENT or state is _RECEIVING) and not self.keep_alive):
            self._let_go(reusable=False)
        elif state is _SENT or state is _RECEIVING:
            self.state = _DRAINING
            self._discard_buffer()
            self._drain_timer = self._loop.call_later(DRAIN_S, self._abandon)

    def close(self) -> None:
        """Stop now: the provider sees the connection close (HTTP/2: the stream reset) at once."""
        if self.state is _DONE:
            return
        self._stop_draining()
        self._let_go(reusable=False)

    # -- letting go -------------------------------------------------------------------------------

    def _abandon(self) -> None:
        self._drain_timer = None
        self._let_go(reusable=False)

    def _stop_draining(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _discard_buffer(self) -> None:
        # Unread bytes still count against an HTTP/2 connection's window (and may hold an HTTP/1.1
        # connection paused): acknowledge them so that dropping them frees that room.
        if self._buffered:
            self._conn.consumed(self, self._buffered)
        self._chunks.clear()
        self._buffered = 0

    def _let_go(self, *, reusable: bool) -> None:
        self.state = _DONE
        self._discard_buffer()
        self._conn.finish(self, reusable=reusable)
