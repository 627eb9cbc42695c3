"""What every upstream connection is: a state, a listener told when it changes, and the two ways
it ends.

Like httpcore's ``HTTPConnectionState``, a connection is in exactly one state, and the pool reads
that state instead of flags. A connection does not know its pool: it calls ``on_change(self)``
when it becomes IDLE, frees a slot for another call (HTTP/2) or closes, and the pool's listener
reads the state and acts. A connection ends in one of two ways, each with one verb:

- ``close()``: the relay ends it (a call it was carrying was dropped, a reply it could not read, the
  keep-alive sweep, shutdown). Calls still on it fail with the given error.
- ``connection_lost()``: the transport ended under it (the provider or the network closed it). What
  that means for the calls in flight is the protocol's to say (``_end``).

Both pass through ``_closed()``, which tells the listener exactly once.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from app.providers.upstream.errors import UpstreamConnectionError

if TYPE_CHECKING:
    from app.providers.upstream.request import RequestTemplate
    from app.providers.upstream.response import UpstreamResponse


class ConnectionState(enum.Enum):
    NEW = "new"  # connected, not yet carrying a call
    ACTIVE = "active"  # carrying a call (HTTP/2: at least one)
    IDLE = "idle"  # kept alive, carrying nothing: the pool's sweep closes it after its keep-alive expiry
    CLOSED = "closed"  # ended by either side; never used again


NEW, ACTIVE, IDLE, CLOSED = ConnectionState.NEW, ConnectionState.ACTIVE, ConnectionState.IDLE, ConnectionState.CLOSED


class Connection(asyncio.Protocol):
    """The part of an HTTP/1.1 and an HTTP/2 connection that the pool and a response see."""

    __slots__ = ("idle_since", "loop", "on_change", "served", "state", "transport")

    #: HTTP/2 connections carry several calls at once and stay in the pool while they do.
    http2: ClassVar[bool] = False

    def __init__(self, on_change: Callable[[Connection], None]) -> None:
        #: Told (with this connection) when it turns IDLE, has room for another call, or closes.
        self.on_change = on_change
        self.state = NEW
        self.transport: asyncio.Transport | None = None
        # Its loop, taken once (a connection is made inside it): on Python 3.11 every
        # asyncio.get_running_loop() is a getpid() system call (its fork check), and the pool and every
        # response on the connection need the loop's clock or its futures.
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0  # loop time it last became IDLE
        self.served = 0  # calls it has carried to their end: a reused connection may have gone stale

    # -- the pool's view ------------------------------------------------------------------------

    def expired(self, now: float, keepalive_s: float) -> bool:
        return self.state is IDLE and now - self.idle_since >= keepalive_s

    def has_room(self) -> bool:
        """Whether it can take one more call while others are on it (HTTP/2 only)."""
        return False

    # -- what a call does with it (one protocol each) -------------------------------------------

    async def send(self, response: UpstreamResponse, request: RequestTemplate, body: bytes) -> None:
        raise NotImplementedError

    def backlogged(self) -> None:
        """A response's reader is behind by more than HIGH_WATER bytes."""

    def consumed(self, response: UpstreamResponse, nbytes: int) -> None:
        """A response's reader took ``nbytes`` (or they were dropped)."""

    def finish(self, response: UpstreamResponse, *, reusable: bool) -> None:
        """A response is let go; ``reusable`` when its body ended cleanly on a kept-alive connection."""
        raise NotImplementedError

    def _end(self, error: UpstreamConnectionError | None) -> None:
        """What the connection's end means for the calls in flight: ``error`` when the relay closed
        it (they fail with it), None when the transport was lost (the protocol decides)."""
        raise NotImplementedError

    # -- the two ways it ends -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def close(self, error: UpstreamConnectionError | None = None) -> None:
        """The relay ends the connection: the provider sees it close; calls still on it fail."""
        if self.state is CLOSED:
            return
        self._closed()
        self._end(error or UpstreamConnectionError("the relay closed the connection"))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport ended: the provider or the network closed it (after ``close()``: nothing to do)."""
        if self.state is CLOSED:
            return
        self._closed()
        self._end(None)

    def _closed(self) -> None:
        # CLOSED first: whatever the calls' owners do in reaction must see a connection that is gone.
        self.state = CLOSED
        self.on_change(self)
