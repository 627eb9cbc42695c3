"""Draining on SIGTERM / SIGINT (API.md 1.4): finish what was accepted, refuse nothing silently.

Sequence, from the first signal:
1. readiness answers 503 at once (load balancers stop sending);
2. for ``server.shutdown_delay_s`` everything is served as usual (they need a moment to notice);
3. the listener closes; from then on every response carries ``Connection: close``, and a new
   request on a kept-alive connection (one that was idle, or pipelined behind a running stream,
   answered when the stream ends), or a new WebSocket create frame, gets 503
   ``server_shutting_down``. Kept-alive connections are left open for that: closing an idle one
   races with a request the client is sending on it, which would get nothing but EOF;
4. requests and streams in flight get up to ``server.drain_s`` to finish;
5. what still runs then ends in-band with ``server_shutting_down`` (SSE ``event: error``, WebSocket
   ``error`` frames and close 1001, a 503 for a JSON call), its provider call is closed, and its
   outcome is ``shutdown``;
6. uvicorn is told to exit, and the process exits 0. A second signal skips to uvicorn's own exit.

uvicorn would, on its own, close every WebSocket with 1012 at once and re-raise the signal after
shutting down (exit status 143): the handlers installed here replace that for the first signal.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from app.domain.errors import ServerShuttingDown

if TYPE_CHECKING:
    from app.core.stream import ChatStream

logger = structlog.get_logger("chat.drain")

#: How long the last phase waits for ended streams and closed sockets before telling uvicorn to exit.
SETTLE_S = 2.0


class Phase(Enum):
    SERVING = "serving"
    DRAINING = "draining"  # readiness 503, still accepting (shutdown_delay_s)
    CLOSED = "closed"  # listener closed, in-flight work finishing (drain_s)
    ENDING = "ending"  # what is left is being ended in-band


class DrainingSession(Protocol):
    async def close_for_shutdown(self) -> None: ...


class Drain:
    """The server's shutdown state, and the registry of work it must finish or end."""

    def __init__(self, shutdown_delay_s: float, drain_s: float) -> None:
        self.shutdown_delay_s = shutdown_delay_s
        self.drain_s = drain_s
        self.phase = Phase.SERVING
        self._streams: set[ChatStream] = set()
        self._calls: set[asyncio.Task[Any]] = set()
        self._sessions: set[DrainingSession] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._uvicorn_exit: Any = None

    # -- what the app asks ------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.phase is not Phase.SERVING

    @property
    def refusing(self) -> bool:
        """New requests are refused with 503 (the listener has closed)."""
        return self.phase in (Phase.CLOSED, Phase.ENDING)

    @property
    def ending(self) -> bool:
        return self.phase is Phase.ENDING

    def refusal(self) -> ServerShuttingDown:
        return ServerShuttingDown("The server is shutting down; retry on another instance.")

    # -- registry ---------------------------------------------------------------------------

    def track_stream(self, stream: ChatStream) -> None:
        self._streams.add(stream)
        self._idle.clear()
        if self.ending:  # opened in the last moments (a cache replay, say): end it like the rest
            stream.end_with(self.refusal())

    def stream_closed(self, stream: ChatStream) -> None:
        self._streams.discard(stream)
        self._check_idle()

    @contextmanager
    def call(self) -> Iterator[None]:
        """Around a JSON call: it is waited for, and cancelled (-> 503) when the drain time is up."""
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        self._idle.clear()
        try:
            yield
        finally:
            self._calls.discard(task)
            self._check_idle()

    def track_session(self, session: DrainingSession) -> None:
        self._sessions.add(session)

    def session_closed(self, session: DrainingSession) -> None:
        self._sessions.discard(session)

    def _check_idle(self) -> None:
        if not self._streams and not self._calls:
            self._idle.set()

    # -- the sequence -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Take over SIGTERM and SIGINT from uvicorn for the first signal (main thread only)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.signal(sig, lambda s, f: self._on_signal(loop, s, f))
            except ValueError:  # not the main thread (an embedded server): nothing to take over
                return
            # uvicorn's handler is its Server's bound ``handle_exit``: the server to stop at the end.
            server = getattr(previous, "__self__", None)
            if server is not None:
                self._uvicorn_exit = server

    def _on_signal(self, loop: asyncio.AbstractEventLoop, sig: int, frame: FrameType | None) -> None:
        if self._task is not None and self._uvicorn_exit is not None:
            self._uvicorn_exit.handle_exit(sig, frame)  # a second signal: uvicorn's own (fast) exit
            return
        loop.call_soon_threadsafe(self.begin, self._uvicorn_exit)

    def begin(self, server: Any = None) -> None:
        """Start draining (idempotent); ``server`` is uvicorn's Server, told to exit at the end."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(server), name="drain")

    async def _run(self, server: Any) -> None:
        started = time.monotonic()
        self.phase = Phase.DRAINING
        logger.warning(
            "draining", shutdown_delay_s=self.shutdown_delay_s, drain_s=self.drain_s, in_flight=self._in_flight()
        )
        await asyncio.sleep(self.shutdown_delay_s)
        self.phase = Phase.CLOSED
        if server is not None:
            _close_listeners(server)
        try:
            await asyncio.wait_for(self._idle.wait(), self.drain_s)
        except TimeoutError:
            pass
        left = self._in_flight()
        self.phase = Phase.ENDING
        error = self.refusal()
        for stream in list(self._streams):
            stream.end_with(error)
        for task in list(self._calls):
            task.cancel()
        sessions = [s.close_for_shutdown() for s in list(self._sessions)]
        try:
            async with asyncio.timeout(SETTLE_S):
                await asyncio.gather(self._idle.wait(), *sessions, return_exceptions=True)
        except TimeoutError:
            pass
        logger.warning("drained", seconds=round(time.monotonic() - started, 2), ended_in_band=left)
        if server is not None:
            server.should_exit = True  # not handle_exit: that would re-raise the signal (exit 143)

    def _in_flight(self) -> int:
        return len(self._streams) + len(self._calls)


def _close_listeners(server: Any) -> None:
    """Stop accepting. Open connections stay: each one's next request gets its 503 and a close
    (the middleware), and uvicorn closes what is left when it exits."""
    for listener in getattr(server, "servers", []):
        listener.close()
