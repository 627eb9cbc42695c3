"""The rest of a stream pushed from the provider's connection to the client's, with no task between.

Pulled, every chunk wakes the client's task: the provider connection's callback resolves a future,
the loop resumes the task through the pump, the stream, the source and the response's read (a
handful of coroutine frames), and the write goes out through the server's ``send`` coroutine. On a
gateway whose streams each tick on their own timer that wake-up is most of a chunk's cost. Pushed,
the provider connection's ``data_received`` splits the read into events (``RelayStream``), the
stream numbers and logs them (``ChatStream.accept``, the same code the pull runs) and the writer
frames them into one write on the client's socket (``DirectBody``): a chunk costs about what a bare
socket relay pays for it.

The stream's first chunk is still pulled (the status window, retries and fallbacks all happen
before it); the pump then hands over to a ``PushRun`` when the source can push (a relayed stream)
and the writer can write synchronously (SSE on uvicorn), and waits for the last event on its
future, inside the request's disconnect guard as before. Everything that ends a stream keeps
working: a client that leaves cancels that wait (the stream's ``close`` closes the upstream), the
deadline watchdog and a drain end it through ``interrupt``, and a client that stops reading holds
the provider back (HTTP/1.1: its socket stops being read; HTTP/2: its window closes) until the
client's socket drains, bounded by the server's write timeout.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, TypeGuard, runtime_checkable

from app.domain.chunks import Chunk, Item
from app.domain.errors import GatewayError, UpstreamUnavailable
from app.domain.events import ClientLeft, StreamEvent
from app.providers.base import PushSource, implements


class PushedStream(Protocol):
    """What a push run does with its stream (``ChatStream``): the same numbering, logging and
    deadline bookkeeping the pull runs, called directly once per upstream read."""

    chunks: int
    last_event_at: float

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the stream runs on."""
        ...

    def accept(self, chunk: Chunk) -> StreamEvent | None:
        """A chunk numbered and logged; None if the client does not get it."""
        ...

    def last(self, error: GatewayError | None) -> StreamEvent:
        """The stream's last event (done, or ``error``), numbered and logged."""
        ...

    def wait_for_provider(self, now: float) -> None:
        """The gateway waits for the provider again from ``now`` (the idle deadline restarts)."""
        ...

    def close_source(self) -> None: ...


@runtime_checkable
class DirectWriter(Protocol):
    """A writer that can also write events synchronously (``SseWriter`` over uvicorn)."""

    def can_write_now(self) -> bool: ...

    def write_now(self, events: list[StreamEvent]) -> bool:
        """Frame and write ``events`` in one write; False when the client's buffer is full."""
        ...

    def hold(self, events: list[StreamEvent]) -> None:
        """Frame ``events`` to go out with the end (``end`` writes whatever is held)."""
        ...

    async def writable(self) -> None:
        """Until the client's buffer takes bytes again."""
        ...


def _writes_now(writer: object) -> TypeGuard[DirectWriter]:
    return implements(writer, DirectWriter)


def hand_over(stream: PushedStream, source: PushSource, writer: object) -> PushRun | None:
    """The rest of a running stream pushed, when its writer can write synchronously; else None (pull on)."""
    if not _writes_now(writer) or not writer.can_write_now():
        return None
    run = PushRun(stream, source, writer)
    return run if run.start() else None


class PushRun:
    """One stream's pushed remainder; owned by its ``ChatStream`` (``ChatStream._push``)."""

    __slots__ = ("_loop", "_resumer", "_source", "_stream", "_writer", "done", "held")

    def __init__(self, stream: PushedStream, source: PushSource, writer: DirectWriter) -> None:
        self._stream = stream
        self._source = source
        self._writer = writer
        self._loop = loop = stream.loop
        #: The stream's last event (done or an error), once it came.
        self.done: asyncio.Future[StreamEvent] = loop.create_future()
        #: The client is full: the provider is held back, so its silence is not the provider's.
        self.held = False
        self._resumer: asyncio.Task[None] | None = None

    def start(self) -> bool:
        return self._source.push(self)

    def take(self, items: list[Item]) -> bool:
        """PushSink: the events of one upstream read (the provider connection's callback)."""
        if self.done.done():
            return True  # ended meanwhile (closed, interrupted): bytes still in flight are nobody's
        stream = self._stream
        events: list[StreamEvent] = []
        last: StreamEvent | None = None
        try:
            for item in items:
                if isinstance(item, Chunk):
                    event = stream.accept(item)
                    if event is not None:
                        events.append(event)
                else:
                    last = stream.last(item)
            stream.chunks += len(events)
            stream.last_event_at = now = self._loop.time()
            stream.wait_for_provider(now)
            if last is not None:
                if events:
                    self._writer.hold(events)  # to go out in the same write as the end
                self.done.set_result(last)
                return True
            if events and not self._writer.write_now(events):
                self._hold_back()
                return False
            return True
        except ClientLeft as exc:  # the writer found its client gone (a WebSocket's full queue)
            self._stop_resumer()
            self.done.set_exception(exc)  # the pump ends the stream as its client's, and closes the source
            return True
        except Exception as exc:  # a bug of ours must still end the stream in the contract's shape
            self.interrupt(UpstreamUnavailable(f"The provider's stream failed: {type(exc).__name__}"))
            return True

    def interrupt(self, error: GatewayError) -> None:
        """End now with ``error`` as the last event (deadline, drain, DELETE): the upstream closes."""
        if not self.done.done():
            self._stop_resumer()
            self.done.set_result(self._stream.last(error))
            self._stream.close_source()

    def stop(self) -> None:
        """The stream closed (its client left): nothing more is taken, no resume is waited for."""
        if not self.done.done():
            self.done.cancel()
        self._stop_resumer()

    def _stop_resumer(self) -> None:
        if self._resumer is not None:
            self._resumer.cancel()
            self._resumer = None

    def _hold_back(self) -> None:
        self.held = True
        if self._resumer is None:
            self._resumer = self._loop.create_task(self._resume_when_writable())

    async def _resume_when_writable(self) -> None:
        await self._writer.writable()
        self._resumer = None
        self.held = False
        if not self.done.done():
            self._stream.wait_for_provider(self._loop.time())
            self._source.resume()
