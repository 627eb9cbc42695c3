"""What a chat stream hands out and to whom: numbered events, the writer a transport implements,
the log a resumable stream appends to, the outcomes a stream ends with and its deadlines.

Kept apart from ``ChatStream`` (``stream.py``) so that transports and the resume store depend on
these small types, not on the stream's machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from app.domain.chunks import Chunk, Usage
from app.domain.errors import GatewayError

if TYPE_CHECKING:
    from app.core.stream import ChatStream

COMPLETED: Final = "completed"
CLIENT_DISCONNECTED: Final = "client_disconnected"
CANCELLED: Final = "cancelled"
UPSTREAM_ERROR: Final = "upstream_error"


class StreamEvent(msgspec.Struct, frozen=True):
    """A numbered event: a chunk, an error, or (both None) the end of the stream.

    A msgspec struct so that the garbage collector does not track it: a resume log keeps every event
    of a stream for ``resume_ttl_s``, hundreds of thousands at a few hundred streams a second, and
    every collection that reaches them walks them all. msgspec leaves untracked a struct that holds
    only untracked values (ints, strings, a ``Chunk``: a ``gc=False`` struct); an error event holds an
    exception and stays tracked, so a cycle through its traceback is still found.
    """

    seq: int
    chunk: Chunk | None = None
    error: GatewayError | None = None
    #: On the last event: the stream's finish reason and usage (a WebSocket done frame carries them).
    finish_reason: str | None = None
    usage: Usage | None = None

    @property
    def is_done(self) -> bool:
        return self.chunk is None and self.error is None


class ClientLeft(Exception):
    """The reader went away (disconnected, or too slow to keep): the stream ends as theirs."""


class StreamWriter(Protocol):
    """A transport's framing of a stream's events; ``pump`` calls it, nothing else does."""

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        """A chunk; ``more``: the next event is already here and follows at once, so a writer may
        hold this one and write both together (``end`` writes whatever is held)."""
        ...

    async def end(self, event: StreamEvent) -> None:
        """The last event: done (``event.is_done``) or an error."""
        ...

    def cancelled(self, stream: ChatStream) -> None:
        """The stream was cancelled by its client before its last event (best effort, synchronous)."""
        ...


class StreamLogSink(Protocol):
    """Where a stream's events go as they are produced (``app/resume/log.py``), and what a follower reads."""

    def append(self, event: StreamEvent) -> None: ...

    def after(self, seq: int) -> StreamEvent | None:
        """The event right after ``seq``, None if it is not there yet; LookupError if trimmed away."""
        ...

    async def wait(self) -> None:
        """Until the next append."""
        ...

    async def readers_elsewhere(self) -> bool:
        """True while a reader on another replica follows this stream (the grace is then renewed)."""
        ...


class _NoGuard:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


NO_GUARD: Final = _NoGuard()


class Deadlines:
    __slots__ = ("first_chunk_s", "heartbeat_s", "idle_s")

    def __init__(self, first_chunk_s: float, idle_s: float, heartbeat_s: float) -> None:
        self.first_chunk_s = first_chunk_s
        self.idle_s = idle_s
        self.heartbeat_s = heartbeat_s
