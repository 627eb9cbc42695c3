"""A resumable stream that outlives its client for a grace period: one producer pulls into the log,
and every reader (the original client included) follows the log.

A client that leaves then costs nothing but a grace timer, and the upstream call goes on for
``grace_s`` waiting for a resume; a reader on another replica (a Redis store) renews the grace.
The ``Detachment`` is owned by its ``ChatStream`` and lives exactly as long: the stream's ``close``
cancels its timer, and the producer ends with the stream. It sees the stream through
``DetachedStream``, the few public methods it needs, and its client reads the log as every other
reader does (``app/core/follow.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from app.core.follow import Follower
from app.domain.errors import InvalidResumePosition
from app.domain.events import CLIENT_DISCONNECTED, COMPLETED, UPSTREAM_ERROR, ClientLeft, StreamEvent, StreamWriter
from app.resume.replay import LocalReplay

if TYPE_CHECKING:
    from app.resume.log import StreamLog


class DetachedStream(Protocol):
    """What a detachment does with its stream: pull it, close it, answer its client's cancel."""

    id: str
    outcome: str | None

    async def next_event(self) -> StreamEvent: ...

    def mark_first_byte(self) -> None: ...

    def close(self, outcome: str) -> None: ...

    def end_cancelled(self, writer: StreamWriter | None) -> bool:
        """When its client asked to cancel: answer it through ``writer`` and close (True)."""
        ...


_SCHEDULED: set[asyncio.Task[None]] = set()  # keeps grace-over checks alive until they ran


class Detachment:
    __slots__ = ("_grace_timer", "_log", "_producer", "_readers", "_stream", "grace_s")

    def __init__(self, stream: DetachedStream, log: StreamLog, grace_s: float) -> None:
        self._stream = stream
        self._log = log
        self.grace_s = grace_s
        self._readers = 0
        self._grace_timer: asyncio.TimerHandle | None = None
        self._producer: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """A reader (the original client or a resume) follows the stream: no grace runs meanwhile."""
        self._readers += 1
        self.stop_grace()
        stream = self._stream
        if self._producer is None and stream.outcome is None:
            self._producer = asyncio.get_running_loop().create_task(self._produce(), name=f"stream:{stream.id}")

    def release(self) -> None:
        """A reader left: with nobody left, the upstream call goes on for ``grace_s``, then stops."""
        self._readers -= 1
        if self._readers > 0 or self._stream.outcome is not None or self._producer is None:
            return
        self._arm_grace()

    def stop_grace(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None

    def _arm_grace(self) -> None:
        loop = asyncio.get_running_loop()
        self._grace_timer = loop.call_later(self.grace_s, lambda: _spawn(self._grace_over()))

    async def _grace_over(self) -> None:
        self._grace_timer = None
        stream = self._stream
        if self._readers > 0 or stream.outcome is not None:
            return
        try:
            elsewhere = await self._log.readers_elsewhere()
        except Exception:  # the shared store is away: nobody can be reading it elsewhere either
            elsewhere = False
        if self._readers > 0 or stream.outcome is not None:
            return
        if elsewhere:
            self._arm_grace()
        else:
            stream.close(CLIENT_DISCONNECTED)

    async def _produce(self) -> None:
        """Pull every event into the log until the last one (the log's append wakes the readers)."""
        stream = self._stream
        outcome = CLIENT_DISCONNECTED
        try:
            while True:
                event = await stream.next_event()
                if event.chunk is None:
                    outcome = COMPLETED if event.error is None else event.error.outcome
                    return
        except asyncio.CancelledError:
            pass  # closed (cancel, grace over): close() has run and set the outcome
        except Exception:
            outcome = UPSTREAM_ERROR
        finally:
            stream.close(outcome)

    async def follow(self, writer: StreamWriter, guard: AbstractContextManager[Any]) -> None:
        """The stream's ``pump`` for its client: write what the log holds, from the first event on."""
        stream = self._stream
        self.attach()  # before reading: it starts the producer
        follower = Follower(LocalReplay(self._log, 0, attach=False))
        try:
            while True:
                try:
                    events = follower.batch()
                except InvalidResumePosition:
                    raise ClientLeft from None  # so far behind that the log dropped its next event
                if not events:
                    await follower.wait(guard)
                    continue
                stream.mark_first_byte()
                last = events[-1]
                for event in events:
                    if event.chunk is None:
                        await writer.end(event)
                        return
                    # Events already logged go out together (``more``: the writer may hold this one).
                    await writer.chunk(event.seq, event.chunk.raw, event is not last)
        except (ClientLeft, asyncio.CancelledError):
            stream.end_cancelled(writer)
            raise
        finally:
            follower.close()
            self.release()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _SCHEDULED.add(task)
    task.add_done_callback(_SCHEDULED.discard)
