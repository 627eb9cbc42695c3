"""What a resume reads: the events after a position, then the live ones, until the last."""

from __future__ import annotations

from typing import Protocol

from app.domain.errors import InvalidResumePosition
from app.domain.events import StreamEvent
from app.resume.log import StreamLog


class Replay(Protocol):
    stream_id: str
    #: The framing the stream was created in (``app/api/framing.py``).
    format: str

    @property
    def at_end(self) -> bool:
        """The position is the stream's last event: nothing is left to send."""
        ...

    def take(self) -> StreamEvent | None:
        """The next event if it is here; None if it has not been produced yet."""
        ...

    async def wait(self) -> None:
        """Until ``take`` may have something (callers bound it with their own timeout)."""
        ...

    def close(self) -> None: ...


class LocalReplay:
    """A replay of a log held in this process; attached to the live stream while it runs, so that
    the stream's detach grace does not run out under a resumed reader."""

    __slots__ = ("_attached", "_log", "_seq", "format", "stream_id")

    def __init__(self, log: StreamLog, after_seq: int, *, attach: bool = True) -> None:
        """``attach``: False for the stream's own client, which attaches itself (``Detachment.follow``)."""
        self.stream_id = log.stream_id
        self.format = log.format
        self._log = log
        self._seq = after_seq
        stream = log.stream
        self._attached = attach and stream is not None and stream.outcome is None
        if stream is not None and self._attached:
            stream.attach()

    @property
    def at_end(self) -> bool:
        return self._log.ended and self._seq >= self._log.last_seq

    def take(self) -> StreamEvent | None:
        try:
            event = self._log.after(self._seq)
        except LookupError:
            # The reader fell behind a log trimmed under it: it cannot be given what it missed.
            raise InvalidResumePosition("The stream's log no longer holds the next event.") from None
        if event is not None:
            self._seq = event.seq
        return event

    async def wait(self) -> None:
        if self._log.last_seq > self._seq:
            # Appended since this reader's last take (while it was writing to its client): the log's
            # next append may be a long way off, or never come (the stream has ended).
            return
        await self._log.wait()

    def close(self) -> None:
        if self._attached:
            self._attached = False
            stream = self._log.stream
            if stream is not None:
                stream.release()
