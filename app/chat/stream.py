"""One chat stream: an upstream reader task that yields numbered events, and one handle to end it.

The reader applies the first-chunk and idle deadlines and turns every failure into an error event;
consumers (the SSE and WebSocket framers) read events, get heartbeat ticks while the upstream is
silent, and end the stream through ``close(outcome)``, which cancels the upstream call at once.
Sequence numbers are assigned here and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Final, Protocol

from app.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from app.providers.base import Chunk, Usage

COMPLETED: Final = "completed"
CLIENT_DISCONNECTED: Final = "client_disconnected"
CANCELLED: Final = "cancelled"
UPSTREAM_ERROR: Final = "upstream_error"
TIMEOUT: Final = "timeout"


class StreamEvent:
    """A numbered event: a chunk, an error, or (both None) the end of the stream."""

    __slots__ = ("chunk", "error", "seq")

    def __init__(self, seq: int, chunk: Chunk | None = None, error: GatewayError | None = None) -> None:
        self.seq = seq
        self.chunk = chunk
        self.error = error

    @property
    def is_done(self) -> bool:
        return self.chunk is None and self.error is None


_HEARTBEAT = StreamEvent(0)  # put in the queue by the heartbeat timer, never numbered or sent as an event


class Deadlines:
    __slots__ = ("first_chunk_s", "heartbeat_s", "idle_s")

    def __init__(self, first_chunk_s: float, idle_s: float, heartbeat_s: float) -> None:
        self.first_chunk_s = first_chunk_s
        self.idle_s = idle_s
        self.heartbeat_s = heartbeat_s


class StreamObserver(Protocol):
    """Told about each stream's milestones (metrics); never per chunk."""

    def stream_opened(self, stream: ChatStream) -> None: ...
    def stream_first_byte(self, stream: ChatStream) -> None: ...
    def stream_first_token(self, stream: ChatStream) -> None: ...
    def stream_closed(self, stream: ChatStream) -> None: ...


class ChatStream:
    def __init__(
        self,
        stream_id: str,
        model: str,
        transport: str,
        source: AsyncIterator[Chunk],
        deadlines: Deadlines,
        *,
        queue_size: int = 256,
        started_at: float | None = None,
        observer: StreamObserver | None = None,
        include_usage: bool = True,
    ) -> None:
        self.id = stream_id
        self.model = model
        self.transport = transport
        self.deadlines = deadlines
        self.started_at = time.perf_counter() if started_at is None else started_at
        self.upstream_started_at = 0.0
        self.first_token_at: float | None = None
        self.first_byte_at: float | None = None
        self.ended_at: float | None = None
        self.chunks = 0
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: GatewayError | None = None
        self.outcome: str | None = None
        self._source = source
        self._queue: asyncio.Queue[StreamEvent] = asyncio.Queue(maxsize=queue_size)
        self._observer = observer
        self._include_usage = include_usage
        self._task: asyncio.Task[None] | None = None
        self._held: StreamEvent | None = None
        self.metric_attrs: dict[str, Any] = {}
        self._deadline_at = 0.0
        self._awaiting_upstream = False
        self._timed_out = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._last_event_at = 0.0
        self._heartbeat: asyncio.TimerHandle | None = None
        self.cache_status: str | None = None  # X-Cache: HIT, MISS, BYPASS; None when caching is off

    def start(self) -> ChatStream:
        self.upstream_started_at = time.perf_counter()
        self._task = asyncio.create_task(self._read_upstream(), name=f"upstream:{self.id}")
        if self._observer is not None:
            self._observer.stream_opened(self)
        return self

    # Deadlines and heartbeats are watchdog timers that re-arm themselves once per period, rather than
    # a timeout context per chunk: per chunk the hot path only stores a timestamp.

    def _watch_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self.outcome is not None:
            return  # finished, or closed by its consumer (which cancelled the task itself)
        now = loop.time()
        if self._awaiting_upstream and now >= self._deadline_at:
            self._timed_out = True
            self._task.cancel()
            return
        self._watchdog = loop.call_at(max(self._deadline_at, now + 0.001), self._watch_upstream)

    async def _read_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        source = self._source
        seq = 0
        error: GatewayError | None = None
        idle = self.deadlines.idle_s
        self._deadline_at = loop.time() + self.deadlines.first_chunk_s
        self._watchdog = loop.call_at(self._deadline_at, self._watch_upstream)
        waited = False
        try:
            while True:
                if waited:
                    # The idle deadline runs from when the gateway waits for the provider again, so
                    # time spent waiting on a slow client never counts against the provider.
                    self._deadline_at = loop.time() + idle
                waited = True
                self._awaiting_upstream = True
                try:
                    chunk = await anext(source)
                except StopAsyncIteration:
                    break
                finally:
                    self._awaiting_upstream = False
                if chunk.has_content and self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                    if self._observer is not None:
                        self._observer.stream_first_token(self)
                if chunk.finish_reason is not None:
                    self.finish_reason = chunk.finish_reason
                if chunk.usage is not None:
                    self.usage = chunk.usage
                    # The gateway always asks for usage (for token metrics); a client that did not
                    # ask does not get the usage-only chunk.
                    if chunk.usage_only and not self._include_usage:
                        continue
                seq += 1
                await self._queue.put(StreamEvent(seq, chunk))
        except GatewayError as exc:
            error = exc
        except asyncio.CancelledError:
            if not self._timed_out or self.outcome is not None:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            error = UpstreamTimeout(
                "The provider sent no first chunk in time."
                if seq == 0
                else "The provider went silent mid-stream for longer than the idle timeout."
            )
        except Exception as exc:  # a provider bug must still end the stream in the contract's shape
            error = UpstreamUnavailable(f"The provider's stream failed: {type(exc).__name__}")
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    pass
        self.error = error
        await self._queue.put(StreamEvent(seq + 1, error=error))

    async def first_event(self, timeout: float) -> StreamEvent | None:
        """Wait up to ``timeout`` for the first event and keep it for ``events``; None if none came."""
        if self._held is None:
            try:
                async with asyncio.timeout(timeout):
                    self._held = await self._queue.get()
            except TimeoutError:
                return None
        return self._held

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._last_event_at >= self.deadlines.heartbeat_s and self._queue.empty():
            self._queue.put_nowait(_HEARTBEAT)
            self._last_event_at = now
        self._heartbeat = loop.call_at(self._last_event_at + self.deadlines.heartbeat_s, self._beat)

    async def events(self) -> AsyncIterator[StreamEvent | None]:
        """Events until the last one (done or error); None is a heartbeat tick during silence."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        self._last_event_at = loop.time()
        self._heartbeat = loop.call_at(self._last_event_at + self.deadlines.heartbeat_s, self._beat)
        try:
            if self._held is not None:
                event: StreamEvent | None = self._held
                self._held = None
            else:
                event = None
            while True:
                if event is None:
                    event = await queue.get()
                if event is _HEARTBEAT:
                    yield None
                    event = None
                    continue
                self._last_event_at = loop.time()
                if event.chunk is not None:
                    self.chunks += 1
                yield event
                if event.chunk is None:
                    return
                event = None
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()

    def mark_first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
            if self._observer is not None:
                self._observer.stream_first_byte(self)

    def close(self, outcome: str) -> None:
        """End the stream once: cancel the upstream call if it still runs and report the outcome."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.ended_at = time.perf_counter()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._observer is not None:
            self._observer.stream_closed(self)
