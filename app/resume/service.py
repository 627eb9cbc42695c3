"""Resumes: gives each stream its log, opens replays, stops streams, counts results.

The live stream is always served from this process's memory; the store decides who else can read
the log: ``memory`` (this process, until ``resume_ttl_s`` after the end) or ``redis`` (every replica,
``app/resume/redis_store.py``). Ownership is the gateway key's scope: a stream started with another
key is a 404, the same answer as one that never existed, so stream ids cannot be probed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from app.domain.errors import InvalidResumePosition, StreamNotFound
from app.resume.log import LiveStream, StreamLog
from app.resume.memory import MemoryResumeStore
from app.resume.replay import LocalReplay, Replay

if TYPE_CHECKING:
    from app.config.settings import StreamingSettings

#: A position past the end waits this long for a replica that is still appending.
PAST_END_WAIT_S = 1.0

REPLAYED, NOT_FOUND, INVALID, UNAVAILABLE = "replayed", "not_found", "invalid", "unavailable"

#: What a stream id the gateway hands out can look like. Anything else names no stream, and is never
#: used to build a store key (``<id>:meta`` would otherwise name another key of a stream's).
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class ResumableStream(LiveStream, Protocol):
    """A new stream that a log is given to (``ChatStream``)."""

    @property
    def id(self) -> str: ...

    def detach(self, log: StreamLog, grace_s: float) -> None: ...


class SharedStore(Protocol):
    """A store that replicas share (Redis): the local logs are the fast path, this the shared one."""

    def begin(self, log: StreamLog) -> None: ...
    def check_available(self, log: StreamLog | None) -> None: ...
    async def open(self, stream_id: str, owner: str, after_seq: int) -> Replay: ...
    async def stop(self, stream_id: str, owner: str) -> bool: ...
    async def health(self) -> bool: ...
    async def close(self) -> None: ...


def parse_position(value: str | None, stream_id: str) -> int:
    """``<stream id>:<seq>`` -> seq; none -> 0 (from the start). Another stream's id or a bad seq is a 409."""
    if not value:
        return 0
    sid, _, seq = value.strip().rpartition(":")
    if sid != stream_id or not (seq.isascii() and seq.isdigit()) or len(seq) > 12:
        raise InvalidResumePosition(
            "The last event id must be `<stream id>:<seq>` of this stream.", param="last_event_id"
        )
    return int(seq)


class Resumes:
    def __init__(
        self,
        settings: StreamingSettings,
        local: MemoryResumeStore,
        shared: SharedStore | None = None,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        self.enabled = settings.resume_max_events > 0
        self.grace_s = settings.detach_grace_s
        self.local = local
        self.shared = shared
        self._on_result = on_result

    def begin(self, stream: ResumableStream, owner: str, format: str = "chat") -> None:
        """Give a new stream its log (before it starts, so that its first event is logged);
        ``format``: the framing its events are replayed in (the API that created it)."""
        if not self.enabled:
            return
        log = self.local.begin(stream.id, owner)
        log.format = format
        log.stream = stream
        stream.detach(log, self.grace_s)
        if self.shared is not None:
            self.shared.begin(log)

    async def open(self, stream_id: str, owner: str, position: str | None) -> Replay:
        """A replay of the stream after ``position`` (``<stream id>:<seq>``; None: from the start)."""
        try:
            replay = await self._open(stream_id, owner, await self._position(stream_id, owner, position))
        except StreamNotFound:
            self._count(NOT_FOUND)
            raise
        except InvalidResumePosition:
            self._count(INVALID)
            raise
        except Exception:
            self._count(UNAVAILABLE)
            raise
        self._count(REPLAYED)
        return replay

    async def _position(self, stream_id: str, owner: str, position: str | None) -> int:
        try:
            return parse_position(position, stream_id)
        except InvalidResumePosition:
            # An unknown stream is a 404 whatever its Last-Event-ID says: look first.
            (await self._open(stream_id, owner, 0)).close()
            raise

    async def _open(self, stream_id: str, owner: str, after_seq: int) -> Replay:
        if not _STREAM_ID.fullmatch(stream_id):
            raise StreamNotFound("No such stream (not a stream id of this gateway's).")
        log = self._own_log(stream_id, owner)
        if self.shared is not None:
            self.shared.check_available(log)  # 503 when the shared log cannot be trusted
            if log is None:
                return await self.shared.open(stream_id, owner, after_seq)
        if log is None:
            raise StreamNotFound(f"No stream {stream_id!r} to resume (unknown, expired, or not yours).")
        if after_seq > log.last_seq and not await log.wait_for(after_seq, PAST_END_WAIT_S):
            raise InvalidResumePosition(f"Event {after_seq} is past the end of the stream's log.")
        if after_seq < log.first_seq - 1:
            raise InvalidResumePosition(
                f"The stream's log starts at event {log.first_seq}: events before it were trimmed."
            )
        return LocalReplay(log, after_seq)

    async def stop(self, stream_id: str, owner: str) -> None:
        """DELETE: stop the stream at once (its readers get ``stream_cancelled``); ended -> nothing to do."""
        if not _STREAM_ID.fullmatch(stream_id):
            raise StreamNotFound("No such stream (not a stream id of this gateway's).")
        log = self._own_log(stream_id, owner)
        if log is not None:
            if log.stream is not None:
                log.stream.stop()
            return
        if self.shared is not None and await self.shared.stop(stream_id, owner):
            return
        raise StreamNotFound(f"No stream {stream_id!r} to stop (unknown, expired, or not yours).")

    def _own_log(self, stream_id: str, owner: str) -> StreamLog | None:
        """The stream's local log if ``owner``'s. Another key's is answered as an unknown stream is,
        through the shared store when there is one (its round trip, its 503 while Redis is away), so
        that neither the answer nor its timing says the stream runs here."""
        log = self.local.get(stream_id) if self.enabled else None
        return log if log is not None and log.owner == owner else None

    def _count(self, result: str) -> None:
        if self._on_result is not None:
            self._on_result(result)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
        self.local.close()
