"""A streaming response's body written straight to its connection, from a plain function call.

uvicorn's ``send`` is a coroutine: every body message costs a coroutine frame and, for a stream
whose chunks are pushed from the provider connection's callbacks (``app/core/push.py``), a task to
run it in. Once the response has started, a body message in uvicorn's HTTP/1.1 cycle is no more
than its chunked-encoding framing and one ``transport.write``; ``DirectBody`` does exactly that for
the cycle it was made for, and leaves everything with state to the cycle: the response start
before it, and the last body message (``more_body`` false: the terminating chunk, keep-alive, the
next request) after it, both through ``send`` as usual.

It only exists for uvicorn's httptools cycle (the server this project runs, ``guarded.py``) with a
chunked response in progress; anywhere else ``DirectBody.of`` answers None and the caller keeps
using ``send``. uvicorn is pinned, and a test pins the cycle attributes read here.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class DirectBody:
    __slots__ = ("_cycle", "_flow", "_transport")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle
        self._transport = cycle.transport
        self._flow = cycle.flow

    @classmethod
    def of(cls, send: Any) -> DirectBody | None:
        """A DirectBody for the response ``send`` (the server's own, not a middleware's) belongs to,
        when that is an uvicorn HTTP/1.1 cycle whose chunked response has started; else None."""
        cycle = getattr(send, "__self__", None)
        if (
            type(cycle) is not RequestResponseCycle
            or not cycle.response_started
            or cycle.response_complete
            or cycle.chunked_encoding is not True
            or cycle.scope["method"] == "HEAD"
        ):
            return None
        return cls(cycle)

    def write(self, body: bytes) -> bool:
        """Write ``body`` as one chunk of the response; False when the client's socket buffer is
        full (stop producing until ``writable``). Nothing is written once the client has gone: the
        request's disconnect watch ends the stream."""
        if self._cycle.disconnected:
            return True
        self._transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return not self._flow.write_paused

    @property
    def paused(self) -> bool:
        return self._flow.write_paused and not self._cycle.disconnected

    async def writable(self) -> None:
        """Until the client's socket takes bytes again (or the client has gone). Bounded by the
        connection's write timeout (``guarded.py``), which aborts a connection stuck here."""
        if self.paused:
            await self._flow.drain()
