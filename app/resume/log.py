"""One stream's events, in order, in this process's memory: the live readers' source.

The log keeps the ``StreamEvent`` objects themselves (no encoding: a chunk's bytes are the
provider's, shared with the frame that was written), so a replay frames them exactly as the live
connection did: byte-identical by construction. It holds at most ``max_events`` (the oldest go
first: a resume from before them is a 409) and tells its owner how many bytes it holds, so that
the memory store can keep a total budget.

Readers wait on one ``asyncio.Event`` that the next append sets and replaces; it is only created
when someone waits, so an append with no follower costs a list append and two additions.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from app.domain.events import StreamEvent


class LiveStream(Protocol):
    """What the resume side does with the live stream behind a log (``ChatStream``): a resumed
    reader holds off its detach grace, and ``DELETE`` stops it."""

    @property
    def outcome(self) -> str | None: ...

    def attach(self) -> None: ...

    def release(self) -> None: ...

    def stop(self) -> None: ...


class SharedLog(Protocol):
    """The copy of a log that other replicas read (``app/resume/redis_store.py``)."""

    broken: bool  # an append was lost: resumes of this stream answer 503

    def append(self, event: StreamEvent) -> None: ...
    async def readers_elsewhere(self) -> bool: ...


#: What one logged event costs beyond its chunk's bytes: the StreamEvent (5 slots), the Chunk
#: struct, the bytes object's header and the deque slot; rounded up from what
#: ``loadtests/resume_bench.py`` measures, so the budget errs on the safe side.
EVENT_OVERHEAD = 256


def event_cost(event: StreamEvent) -> int:
    chunk = event.chunk
    return EVENT_OVERHEAD + (len(chunk.raw) if chunk is not None else 0)


class StreamLog:
    __slots__ = (
        "_changed",
        "_events",
        "_grow",
        "ended",
        "ended_at",
        "format",
        "last_append_at",
        "last_seq",
        "owner",
        "shared",
        "size",
        "stream",
        "stream_id",
    )

    def __init__(
        self, stream_id: str, owner: str, max_events: int, grow: Callable[[StreamLog, int], None] | None = None
    ) -> None:
        self.stream_id = stream_id
        self.owner = owner  # the gateway key's scope: only it may resume or stop the stream
        self.stream: LiveStream | None = None  # the live stream, while this process runs it
        self._events: deque[StreamEvent] = deque(maxlen=max_events)
        self.last_seq = 0
        self.ended = False
        self.ended_at = 0.0
        self.last_append_at = time.monotonic()
        self.size = 0
        self._grow = grow
        self._changed: asyncio.Event | None = None
        self.shared: SharedLog | None = None
        #: The framing the stream was created in (``app/api/framing.py``): replays use it too.
        self.format = "chat"

    @property
    def held(self) -> int:
        return len(self._events)

    def release(self) -> None:
        """The log is dropped: its last event's error lets go of the traceback it was raised with.
        Its frames hold the request that failed; freed with the log by reference counting, rather
        than left as a cycle for the collector to find whenever it next runs."""
        if self._events and self._events[-1].error is not None:
            self._events[-1].error.__traceback__ = None

    @property
    def first_seq(self) -> int:
        """The oldest seq still held (``last_seq + 1`` when empty)."""
        return self.last_seq - len(self._events) + 1

    def append(self, event: StreamEvent) -> None:
        events = self._events
        delta = event_cost(event)
        if len(events) == events.maxlen:
            delta -= event_cost(events[0])  # the deque drops it on append
        events.append(event)
        self.last_seq = event.seq
        self.size += delta
        if event.chunk is None:
            self.ended = True
            self.ended_at = time.monotonic()
            self.stream = None  # the log may outlive the stream by resume_ttl_s: do not keep it alive
        if self._grow is not None:
            self._grow(self, delta)
        if self.shared is not None:
            self.shared.append(event)
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    def trim(self, keep: int) -> int:
        """Drop the oldest events down to ``keep`` (the store is over budget); bytes freed."""
        freed = 0
        while len(self._events) > max(keep, 1):
            freed += event_cost(self._events.popleft())
        self.size -= freed
        return freed

    def after(self, seq: int) -> StreamEvent | None:
        index = seq + 1 - self.first_seq
        if index < 0:
            raise LookupError(seq)
        if index >= len(self._events):
            return None
        return self._events[index]

    async def wait(self) -> None:
        changed = self._changed
        if changed is None:
            changed = self._changed = asyncio.Event()
        await changed.wait()

    async def wait_for(self, seq: int, timeout: float) -> bool:
        """Wait up to ``timeout`` until ``seq`` is logged (or the log ends); True if it is."""
        try:
            async with asyncio.timeout(timeout):
                while self.last_seq < seq and not self.ended:
                    await self.wait()
        except TimeoutError:
            pass
        return self.last_seq >= seq

    async def readers_elsewhere(self) -> bool:
        return self.shared is not None and await self.shared.readers_elsewhere()
