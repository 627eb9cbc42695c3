"""One chat stream, owned from open to close by one object: numbered events pulled from the
upstream, its deadlines, its first byte and first token, the pump that hands events to a
transport's writer, its outcome, its close, its metrics observation and its log fields.

The consumer (the SSE response or a WebSocket request) pulls events in its own task; there is no
reader task and no queue in between, because on a gateway that relays thousands of chunks a second
that hop cost a task wake-up and two queue operations per chunk. A relayed SSE stream goes further
after its first chunk: the rest is pushed from the provider connection's callback (``push.py``,
which calls the same ``accept`` and ``last`` the pull does), and the consumer's task only waits for
the end. The first-chunk and idle deadlines
are a watchdog timer that cancels whichever task is waiting on the provider; every failure becomes
an error event; ``close(outcome)`` ends the stream once and closes the upstream call at once.
Sequence numbers are assigned here and nowhere else. Heartbeats are the SSE transport's business
(the rule is ``follow.Heartbeat``): ``last_event_at`` says when the stream last produced something.

Transports are thin writers (``StreamWriter``): ``pump`` drives them, so the pull -> first byte ->
frame -> outcome -> close sequence exists once. A drain ends a stream through ``close`` like any
other end.

The stream log (the resumable streams of ``app/resume/``) attaches here: every event is appended to
``log`` the moment it is pulled (no encoding: the log keeps the event, whose chunk bytes the frames
embed), and a stream that ends without its last event (closed by a cancel, or abandoned) appends a
``stream_cancelled`` error so that no reader of the log waits forever. With a detach grace
(``detach``, ``detach.py``) the stream is *followed* instead of pulled by its client, through the
``Follower`` every reader of a log uses (``follow.py``). Without a
grace (the default) the client's task pulls and leaving cancels the upstream call at once.

The event types, the writer and log protocols and the outcomes are in ``stream_events.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span

from app.core.closing import close_quietly, close_soon
from app.core.detach import Detachment
from app.core.observers import StreamObserver
from app.core.push import PushRun, hand_over
from app.domain.chunks import Chunk, Usage, reaches_client
from app.domain.errors import GatewayError, StreamCancelled, UpstreamTimeout, UpstreamUnavailable
from app.domain.events import (
    CANCELLED,
    CLIENT_DISCONNECTED,
    COMPLETED,
    NO_GUARD,
    UPSTREAM_ERROR,
    ClientLeft,
    Deadlines,
    StreamEvent,
    StreamLogSink,
    StreamWriter,
)
from app.providers.base import can_push
from app.providers.resilient import Trail

if TYPE_CHECKING:
    from app.resume.log import StreamLog


class ChatStream:
    def __init__(
        self,
        stream_id: str,
        model: str,
        transport: str,
        source: AsyncIterator[Chunk],
        deadlines: Deadlines,
        *,
        started_at: float | None = None,
        observer: StreamObserver | None = None,
        include_usage: bool = True,
        trail: Trail | None = None,
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
        self.last_event_at = 0.0  # loop time of the last event handed out (heartbeats key on it)
        self.chunks = 0
        #: Output tokens counted from the provider's chunks so far (an estimate; usage wins).
        self.output_tokens = 0
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.error: GatewayError | None = None
        self.outcome: str | None = None
        self._source = source
        self._observer = observer
        self._include_usage = include_usage
        self._seq = 0
        self._finished = False  # the last event (done or error) has been produced
        self._first: asyncio.Task[StreamEvent] | None = None  # the status window's pull, when one ran
        self._puller: asyncio.Task[Any] | None = None  # the task waiting on the provider, if one is
        self._deadline_at = 0.0
        self._ending: GatewayError | None = None  # set when told to end early (deadline, drain)
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self.metric_attrs: dict[str, Any] = {}
        self.cache_status: str | None = None  # X-Cache: HIT, MISS, BYPASS; None when caching is off
        self.cancel_requested = False
        self.span: Span | None = None  # the request's trace span, when tracing is on
        #: Called once as the stream closes, after the observer (the drain's registry, the limiter's
        #: settlement); set by whoever opens the stream.
        self.on_close: Callable[[ChatStream], None] | None = None
        #: Which deployment answered after how many attempts (None for sources without attempts).
        self.trail = trail
        #: The stream's log, when resuming is on; set before ``start`` by the resume service.
        self.log: StreamLogSink | None = None
        #: Set by ``detach`` (a log and a grace): the stream then outlives a client that leaves.
        self.detachment: Detachment | None = None
        self._push: PushRun | None = None  # the pushed remainder of the stream, once handed over

    def start(self) -> ChatStream:
        # Kept (``loop``): on Python 3.11 every asyncio.get_running_loop() (and current_task() without
        # a loop) is a getpid() system call, and the pull below needs the loop twice per chunk, its
        # writer and its push run once each.
        self._loop = loop = asyncio.get_running_loop()
        self.upstream_started_at = time.perf_counter()
        self.last_event_at = loop.time()
        self._deadline_at = loop.time() + self.deadlines.first_chunk_s
        self._watchdog = loop.call_at(self._deadline_at, self._watch_upstream)
        if self._observer is not None:
            self._observer.stream_opened(self)
        return self

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the stream runs on (taken by ``start()``)."""
        return self._loop

    # The deadlines are one watchdog timer that re-arms itself once per period, rather than a timeout
    # context per chunk: per chunk the hot path only stores a timestamp.

    def _watch_upstream(self) -> None:
        if self._finished or self.outcome is not None:
            return
        loop = self._loop
        now = loop.time()
        if now < self._deadline_at:
            self._watchdog = loop.call_at(self._deadline_at, self._watch_upstream)
        elif self._puller is not None or (self._push is not None and not self._push.held):
            self._interrupt(
                UpstreamTimeout(
                    "The provider sent no first chunk in time."
                    if self._seq == 0
                    else "The provider went silent mid-stream for longer than the idle timeout."
                )
            )
        else:
            # Past the deadline but nobody waits on the provider: the client is being written to, and
            # the next wait sets a fresh deadline. Look again later rather than spin.
            self._watchdog = loop.call_at(now + min(1.0, self.deadlines.idle_s), self._watch_upstream)

    def wait_for_provider(self, now: float) -> None:
        """The idle deadline runs from when the gateway waits for the provider again (pulled or
        pushed), so time spent waiting on a slow client never counts against the provider."""
        self._deadline_at = now + self.deadlines.idle_s

    async def _pull(self) -> StreamEvent:
        """The next event from the provider, in the calling task; never raises for provider failures."""
        source = self._source
        while True:
            if self._ending is not None:  # told to end while nobody was waiting on the provider
                return self.last(self._ending)
            if self._seq:
                self.wait_for_provider(self._loop.time())
            self._puller = asyncio.current_task(self._loop)
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                return self.last(None)
            except GatewayError as exc:
                return self.last(exc)
            except asyncio.CancelledError:
                ending = self._ending
                if ending is None or self.outcome is not None:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                await close_quietly(source)  # the provider's call ends with the stream
                return self.last(ending)
            except Exception as exc:  # a provider bug must still end the stream in the contract's shape
                return self.last(UpstreamUnavailable(f"The provider's stream failed: {type(exc).__name__}"))
            finally:
                self._puller = None
            event = self.accept(chunk)
            if event is not None:
                return event

    def accept(self, chunk: Chunk) -> StreamEvent | None:
        """A provider's chunk numbered and logged (pulled or pushed); None if this client does not get it."""
        if chunk.has_content:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
                if self._observer is not None:
                    self._observer.stream_first_token(self)
            self.output_tokens += chunk.tokens or 1
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
            if not reaches_client(chunk, self._include_usage):
                return None
        self._seq = seq = self._seq + 1
        event = StreamEvent(seq, chunk)
        log = self.log
        if log is not None:
            log.append(event)
        return event

    def _interrupt(self, error: GatewayError) -> None:
        """End the stream with ``error`` as its last event: at once if the provider is being waited
        on (that wait is cancelled and turned into the event), else at the next pull."""
        if self._finished or self.outcome is not None or self._ending is not None:
            return
        self._ending = error
        if self._push is not None:
            self._push.interrupt(error)
            return
        puller = self._puller
        if self._first is not None and not self._first.done():
            self._first.cancel()
        elif puller is not None and puller is not asyncio.current_task():
            puller.cancel()

    def end_with(self, error: GatewayError) -> None:
        """End the stream in-band with ``error`` (the server draining): its readers get the error as
        the last event and the outcome is the error's."""
        self._interrupt(error)

    def last(self, error: GatewayError | None) -> StreamEvent:
        """The stream's last event (done, or ``error``), numbered and logged (pulled or pushed)."""
        self._finished = True
        self.error = error
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._seq += 1
        event = StreamEvent(self._seq, error=error, finish_reason=self.finish_reason, usage=self.usage)
        if self.log is not None:
            self.log.append(event)
        return event

    async def first_event(self, timeout: float) -> StreamEvent | None:
        """Wait up to ``timeout`` for the first event and keep it for ``next_event``; None if none came.

        The wait runs in its own task so that the window can end without cancelling the provider's
        stream, which keeps going and is picked up by ``next_event``. The first call starts that task
        (with no time to wait, it lets the task send the provider call off before returning); a later
        one with no time left answers at once. Only for a status window: without one, ``next_event``
        pulls the first event in its caller's task (``api/status_window.py`` ``open_window``).
        """
        first = self._first
        if first is None:
            first = self._first = self._loop.create_task(self._pull(), name=f"first-event:{self.id}")
            if timeout <= 0:
                # The provider call still goes out now, before the response is built and its headers
                # written: that work then overlaps the provider's time to first chunk.
                await asyncio.sleep(0)
        if first.done():
            return first.result()
        if timeout <= 0:
            return None
        done, _ = await asyncio.wait((first,), timeout=timeout)
        return first.result() if done else None

    @property
    def first_pending(self) -> bool:
        """``first_event`` has started the first pull, and nobody has taken its event yet."""
        return self._first is not None

    async def next_event(self) -> StreamEvent:
        """The next event, pulled in the caller's task; the last one is a done or error event.

        A coroutine rather than an async generator: the consumers' loops call it once per chunk,
        and every generator layer between the provider and the socket costs on every chunk.
        """
        if self._first is not None:
            first, self._first = self._first, None
            event = await first
        else:
            event = await self._pull()
        self.last_event_at = self._loop.time()
        if event.chunk is not None:
            self.chunks += 1
        return event

    async def pump(self, writer: StreamWriter, guard: AbstractContextManager[Any] = NO_GUARD) -> None:
        """Hand every event to ``writer`` until the last one, then close the stream with its outcome.

        ``guard`` wraps each wait for the provider (the SSE request's disconnect watch). A client
        that leaves ends the stream as ``client_disconnected``; one that asked to cancel (``cancel``)
        as ``cancelled``, with the writer told first. With a detach grace the client follows the
        log instead (``Detachment.follow``), and leaving only starts the grace.
        """
        if self.detachment is not None:
            await self.detachment.follow(writer, guard)
            return
        outcome = CLIENT_DISCONNECTED
        pushed: bool | None = None  # whether the rest is pushed (push.py); decided after the first chunk
        # A source that can push also says when its next chunk is already here (``more``).
        source = self._source if can_push(self._source) else None
        try:
            while True:
                with guard:
                    event = await self.next_event()
                if self.first_byte_at is None:
                    self.mark_first_byte()
                if event.chunk is not None:
                    await writer.chunk(event.seq, event.chunk.raw, source is not None and source.more)
                    if pushed is None:
                        running = not self._finished and self._ending is None
                        self._push = hand_over(self, source, writer) if running and source is not None else None
                        pushed = self._push is not None
                    if not pushed:
                        continue
                    assert self._push is not None
                    with guard:
                        event = await self._push.done
                outcome = COMPLETED if event.error is None else event.error.outcome
                await writer.end(event)
                return
        except (ClientLeft, asyncio.CancelledError):
            if outcome == CLIENT_DISCONNECTED:  # left before the last event: a cancel is answered
                self.end_cancelled(writer)
            raise
        except Exception:
            outcome = UPSTREAM_ERROR  # a failure of ours while relaying: not the client's doing
            raise
        finally:
            self.close(outcome)

    # -- detached streams: one producer pulls into the log, readers follow it ------------------

    def detach(self, log: StreamLog, grace_s: float) -> None:
        """Log every event to ``log``; with ``grace_s`` > 0 the upstream call also goes on for that
        long after the last reader left (before ``start``)."""
        self.log = log
        if grace_s > 0:
            self.detachment = Detachment(self, log, grace_s)

    def attach(self) -> None:
        """A reader (a resume) follows the stream: no grace runs meanwhile."""
        if self.detachment is not None:
            self.detachment.attach()

    def release(self) -> None:
        if self.detachment is not None:
            self.detachment.release()

    def stop(self, reason: str = "The stream was cancelled.") -> None:
        """DELETE: end at once, in-band; readers get ``stream_cancelled`` and the outcome is ``cancelled``."""
        self._interrupt(StreamCancelled(reason))

    def request_cancel(self) -> None:
        """The client asked to stop: the next interruption of ``pump`` ends the stream as cancelled."""
        self.cancel_requested = True

    def end_cancelled(self, writer: StreamWriter | None) -> bool:
        """The one "answer cancelled" ending: if the client asked to cancel and the stream is still
        open, ``writer`` tells the client (the stream's first byte if none was), and the stream closes
        as ``cancelled`` (True). Otherwise nothing happens (False)."""
        if not self.cancel_requested or self.outcome is not None:
            return False
        self.mark_first_byte()
        if writer is not None:
            writer.cancelled(self)
        self.close(CANCELLED)
        return True

    def log_fields(self) -> dict[str, Any]:
        """The stream's part of its request's log line."""
        fields: dict[str, Any] = {
            "transport": self.transport,
            "model": self.model,
            "stream_id": self.id,
            "outcome": self.outcome,
            "chunks": self.chunks,
            "ttfb_ms": round((self.first_byte_at - self.started_at) * 1000, 2) if self.first_byte_at else None,
        }
        # trace_id comes from the request's log context (bound where its span starts, service.py).
        if self.trail is not None:
            fields.update(self.trail.log_fields())
        if self.error is not None:
            fields.update(self.error.log_fields())
        return fields

    def mark_first_byte(self) -> None:
        if self.first_byte_at is None:
            self.first_byte_at = time.perf_counter()
            if self._observer is not None:
                self._observer.stream_first_byte(self)

    def close_source(self) -> None:
        """Close the provider call behind the stream on the next loop turn (nobody may be pulling it)."""
        close_soon(self._source)

    def close(self, outcome: str) -> None:
        """End the stream once: stop the upstream call if it still runs and report the outcome."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.ended_at = time.perf_counter()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.trail is not None:
            self.trail.release()
        if self.detachment is not None:
            self.detachment.stop_grace()
        if self._push is not None:
            self._push.stop()
            self._push = None  # it refers to this stream: no cycle left for the garbage collector
        if not self._finished and self.log is not None:
            # The log must end too, or its readers would wait for an event that never comes.
            self._seq += 1
            message = (
                "The stream was cancelled."
                if outcome == CANCELLED
                else "The stream was stopped: its client left and nobody resumed it in time."
            )
            self.log.append(StreamEvent(self._seq, error=StreamCancelled(message)))
        if not self._finished:
            puller = self._puller
            if self._first is not None and not self._first.done():
                self._first.cancel()  # the status window's pull: cancelling it closes the provider's stream
            elif puller is not None and puller is not asyncio.current_task():
                puller.cancel()
            elif puller is None:
                self.close_source()
        if self._observer is not None:
            self._observer.stream_closed(self)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            # Called once and dropped: an adapter's callback holds what it adapts (a Responses run),
            # which holds this stream; kept, the pair would wait, as a cycle, for the collector.
            on_close(self)
