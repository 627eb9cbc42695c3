"""Following a stream's log, for every reader of it, and the one heartbeat rule.

Every reader of a stream's log (the live client of a detached stream, an SSE resume, a WebSocket
resume, a Responses replay) reads it the same way: what the log holds now goes out as one batch
(events that are already there are written together), and when nothing is there the reader waits,
bounded by when its client is owed a heartbeat. ``Follower`` is that loop's one implementation over
the ``Replay`` protocol (a log in this process, or one read from Redis on another replica).

A Redis replay's ``wait`` is a blocking read: cancelling it would cut a reply in the middle. With a
heartbeat the wait therefore runs as a task of its own that a heartbeat never cancels; the next
``wait`` picks the same task up again. Without one (a WebSocket has no heartbeat) the reader awaits
the replay directly, which costs no task per event.

``Heartbeat`` is the rule every SSE reader uses, live or replayed: a heartbeat is due once the client
got nothing for ``period`` seconds. The live writers drive it from a timer (their reader's task waits
on the provider), the follower from its bounded wait.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager
from typing import Any

from app.domain.events import NO_GUARD, StreamEvent
from app.resume.replay import Replay


class Heartbeat:
    """When a reader owes its client a heartbeat: after ``period`` seconds in which it wrote nothing."""

    __slots__ = ("last", "period")

    def __init__(self, period: float, now: float) -> None:
        self.period = period
        self.last = now  # loop time of the last write (or heartbeat)

    def due_in(self, now: float, active_at: float = 0.0) -> float:
        """Seconds until a heartbeat is due (<= 0: now); ``active_at``: another sign of life (loop time)."""
        last = self.last if self.last >= active_at else active_at
        return last + self.period - now

    def wrote(self, now: float) -> None:
        self.last = now


class Follower:
    """One reader's way through a stream's log: ``batch`` what is there, ``wait`` when nothing is."""

    __slots__ = ("_heartbeat", "_loop", "_replay", "_waiting", "ended")

    def __init__(self, replay: Replay, heartbeat_s: float | None = None) -> None:
        self._replay = replay
        self._loop = loop = asyncio.get_running_loop()
        self._heartbeat = Heartbeat(heartbeat_s, loop.time()) if heartbeat_s is not None else None
        self._waiting: asyncio.Future[None] | None = None  # the replay's wait in progress, if one is
        #: The batch handed out last held the stream's last event: nothing follows.
        self.ended = False

    @property
    def replay(self) -> Replay:
        return self._replay

    def batch(self) -> list[StreamEvent]:
        """Every event the log holds now, in order, up to the last one (then ``ended``); empty: wait.

        Raises what the replay's ``take`` raises (a log trimmed under a reader that fell behind)."""
        events: list[StreamEvent] = []
        take = self._replay.take
        while (event := take()) is not None:
            events.append(event)
            if event.chunk is None:
                self.ended = True
                break
        return events

    def wrote(self) -> None:
        """The reader wrote to its client (a batch or a heartbeat): the heartbeat's clock restarts."""
        if self._heartbeat is not None:
            self._heartbeat.wrote(self._loop.time())

    async def wait(self, guard: AbstractContextManager[Any] = NO_GUARD) -> bool:
        """Until the log may hold more (False) or a heartbeat is due (True: write one, then ``wrote``).

        ``guard`` wraps the wait (the request's disconnect watch). A replay's wait may return with
        nothing new (a Redis replay looks around between reads): the caller just asks again."""
        heartbeat = self._heartbeat
        if heartbeat is None:
            with guard:
                await self._replay.wait()
            return False
        due = heartbeat.due_in(self._loop.time())
        if due <= 0:
            return True
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = asyncio.ensure_future(self._replay.wait())
        with guard:
            await asyncio.wait((waiting,), timeout=due)
        if waiting.done():
            self._waiting = None
            waiting.result()
        return False

    def close(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        self._replay.close()
