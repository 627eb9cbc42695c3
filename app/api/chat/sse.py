"""SSE framing of a chat stream, and the response that writes it.

``SseResponse`` is a response type of our own: Litestar's ``Stream`` would open a task group per
response to watch for the client leaving and route every chunk through its iterator machinery,
where here the request's one ``DisconnectWatch`` does that job and the stream's ``pump`` drives an
``SseWriter``. The response start goes through the middleware chain (request id, compression,
CORS and the framework all see it); every body message after it goes straight to the server's
``send`` (``RAW_SEND``, published by the outermost middleware), so a chunk costs one Python-level
send and no middleware frame. Nothing but the response start is of interest to those layers.

Heartbeats follow the one rule every SSE reader uses (``app/core/follow.py``): due once the stream
has produced nothing for ``heartbeat_s``. A live stream's reader waits on the provider, so a timer
that re-arms itself once per period (never per chunk) asks the rule and, when no frame is being
written, writes the comment from a short task of its own: every write is one whole SSE event, so a
heartbeat can only ever land between two events.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

import msgspec
from litestar import Response
from litestar.types import Message, Receive, Scope, Send

from app.api.status_window import wait_window
from app.core.context import context_of
from app.core.follow import Heartbeat
from app.core.stream import ChatStream
from app.domain.errors import GatewayError
from app.domain.events import CLIENT_DISCONNECTED, ClientLeft, StreamEvent
from app.transport.direct_body import DirectBody
from app.transport.disconnect import DisconnectWatch

#: A comment line alone, without the blank line that would end an event: a blank line dispatches an
#: event in parsers that keep the last event id across events as the SSE spec says, and the OpenAI
#: Python SDK then hands its caller an event with empty data, which it fails to decode as JSON (a
#: heartbeat mid-stream broke every SDK stream). Spec parsers ignore the line either way.
HEARTBEAT: bytes = b": keep-alive\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: Where the outermost middleware leaves the server's own ``send`` for responses that bypass the
#: chain after their start (see the module docstring).
RAW_SEND: Final = "chat.raw_send"
_encode = msgspec.json.encode


def chunk_frame(stream_id: bytes, seq: int, data: bytes) -> bytes:
    return b"id: %b:%d\ndata: %b\n\n" % (stream_id, seq, data)


def done_frame(stream_id: bytes, seq: int) -> bytes:
    return b"id: %b:%d\ndata: [DONE]\n\n" % (stream_id, seq)


def error_frame(stream_id: bytes, seq: int, error: GatewayError) -> bytes:
    return b"id: %b:%d\nevent: error\ndata: %b\n\n" % (stream_id, seq, _encode(error.body()))


def end_frame(stream_id: bytes, event: StreamEvent) -> bytes:
    """The frame of a stream's last event: its error, or [DONE]."""
    if event.error is not None:
        return error_frame(stream_id, event.seq, event.error)
    return done_frame(stream_id, event.seq)


#: Frames of events that are already here (``more``) go out together, in writes of up to about this
#: size: few writes, a bounded buffer, and a reader far behind its log (a detach grace) waits for
#: room between writes instead of having megabytes joined (and held) for it in one piece.
HELD_MAX: Final = 64 * 1024


class SseFraming(Protocol):
    """How one API frames a stream's events: chat completions here, others (the Messages API's
    named events) beside their protocol. A stream's log replays in the framing it was created in."""

    heartbeat: bytes

    def chunk(self, stream_id: bytes, seq: int, data: bytes) -> bytes: ...

    def end(self, stream_id: bytes, event: StreamEvent) -> bytes: ...


class ChatFraming:
    """Chat completions: ``id:`` and ``data:`` per chunk, ``[DONE]`` or ``event: error`` last."""

    heartbeat = HEARTBEAT
    chunk = staticmethod(chunk_frame)  # the function itself: one call per frame, not two

    @staticmethod
    def end(stream_id: bytes, event: StreamEvent) -> bytes:
        return end_frame(stream_id, event)


CHAT_FRAMING: Final = ChatFraming()


class _Heartbeat:
    """Writes the framing's heartbeat when the one rule (``Heartbeat``) says it is due: for ``period``
    seconds the stream produced no event and nothing was written. The reader's task is waiting on
    the provider meanwhile, so a timer asks the rule, re-armed once per period (never per chunk)."""

    __slots__ = ("_beat_bytes", "_beating", "_loop", "_rule", "_send", "_stream", "_timer", "writing")

    def __init__(self, stream: ChatStream, send: Send, beat: bytes = HEARTBEAT) -> None:
        self._beat_bytes = beat
        self._loop = loop = stream.loop
        self._stream = stream
        self._send = send
        self._rule = rule = Heartbeat(stream.deadlines.heartbeat_s, loop.time())
        self._beating: asyncio.Task[None] | None = None
        self.writing = False  # set by the writer around each frame's write
        self._timer = loop.call_at(rule.last + rule.period, self._check)

    def _check(self) -> None:
        rule, now = self._rule, self._loop.time()
        due = rule.due_in(now, self._stream.last_event_at)
        if due <= 0:
            if self.writing or self._beating is not None:
                # A write is under way (a client slow to read): bytes are moving, look again later.
                due = rule.period
            else:
                rule.wrote(now)
                due = rule.period
                self._beating = self._loop.create_task(self._beat())
        self._timer = self._loop.call_at(now + due, self._check)

    async def _beat(self) -> None:
        try:
            await self._send({"type": "http.response.body", "body": self._beat_bytes, "more_body": True})
        except Exception:  # the client is gone: the pump finds out on its own
            pass
        finally:
            self._beating = None

    def stop(self) -> None:
        self._timer.cancel()
        if self._beating is not None:
            self._beating.cancel()


class SseWriter:
    """Frames a stream's events as SSE and writes them with one ``send`` per group of events that
    arrived together (each chunk alone when they come one by one, as they mostly do).

    With ``direct`` (the server's connection, ``DirectBody``) it can also write synchronously, for
    a stream whose events are pushed from the provider's connection (``app/core/push.py``).
    """

    __slots__ = ("_chunk_frame", "_direct", "_end_frame", "_heartbeat", "_held", "_send", "_sid")

    def __init__(
        self, stream: ChatStream, send: Send, direct: DirectBody | None = None, framing: SseFraming = CHAT_FRAMING
    ) -> None:
        self._sid = stream.id.encode()
        self._send = send
        self._direct = direct
        self._chunk_frame = framing.chunk
        self._end_frame = framing.end
        self._heartbeat = _Heartbeat(stream, send, framing.heartbeat)
        self._held = b""  # frames of events that arrived together with the next one, not yet sent

    def can_write_now(self) -> bool:
        return self._direct is not None

    def _frames(self, events: list[StreamEvent]) -> bytes:
        sid, frame = self._sid, self._chunk_frame
        return b"".join([frame(sid, e.seq, e.chunk.raw) for e in events if e.chunk is not None])

    def write_now(self, events: list[StreamEvent]) -> bool:
        assert self._direct is not None
        chunk = events[0].chunk if len(events) == 1 else None
        # The usual read, one chunk, framed here; several go through ``_frames``.
        frames = self._chunk_frame(self._sid, events[0].seq, chunk.raw) if chunk is not None else self._frames(events)
        if self._held:
            frames, self._held = self._held + frames, b""
        return self._direct.write(frames)

    def hold(self, events: list[StreamEvent]) -> None:
        self._held += self._frames(events)

    async def writable(self) -> None:
        assert self._direct is not None
        await self._direct.writable()

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        frame = self._chunk_frame(self._sid, seq, raw)
        if more and len(self._held) < HELD_MAX:
            # The next event follows without a wait (no heartbeat can come between): one write for both.
            self._held += frame
            return
        if self._held:
            frame, self._held = self._held + frame, b""
        heartbeat = self._heartbeat
        heartbeat.writing = True
        await self._send({"type": "http.response.body", "body": frame, "more_body": True})
        heartbeat.writing = False

    async def end(self, event: StreamEvent) -> None:
        self._heartbeat.stop()
        frame = self._held + self._end_frame(self._sid, event)
        self._held = b""
        await self._send({"type": "http.response.body", "body": frame, "more_body": False})

    def cancelled(self, stream: ChatStream) -> None:
        return None  # an SSE stream is only cancelled by its client leaving: nothing left to tell

    def stop(self) -> None:
        self._heartbeat.stop()


class _SseASGI:
    __slots__ = ("_framing", "_headers", "_stream", "_watch", "_window_ends")

    def __init__(
        self,
        stream: ChatStream,
        watch: DisconnectWatch,
        headers: list[tuple[bytes, bytes]],
        framing: SseFraming,
        window_ends: float,
    ) -> None:
        self._stream = stream
        self._watch = watch
        self._headers = headers
        self._framing = framing
        self._window_ends = window_ends

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream, watch = self._stream, self._watch
        try:
            if not await wait_window(stream, watch, self._window_ends, scope, send):
                return
            start: Message = {"type": "http.response.start", "status": 200, "headers": self._headers}
            await send(start)
            raw_send: Send = scope.get("state", {}).get(RAW_SEND) or send
            writer = SseWriter(stream, raw_send, DirectBody.of(raw_send), self._framing)
            try:
                await stream.pump(writer, watch.guard())
            except ClientLeft:
                # Nothing more to send; the pump has closed the stream as the client's, or, when the
                # stream outlives its reader (a detach grace), the request still ended with the client.
                context_of(scope).outcome = CLIENT_DISCONNECTED
                return
            finally:
                writer.stop()
        except BaseException:
            stream.close("client_disconnected")  # no-op when the pump closed it already
            raise
        finally:
            watch.stop()


class SseResponse(Response[Any]):
    """The SSE response for an open chat stream; its request's disconnect watch comes with it, and
    the end of its status window (``open_window``), which it waits out before it starts."""

    def __init__(
        self,
        stream: ChatStream,
        watch: DisconnectWatch,
        headers: dict[str, str],
        window_ends: float,
        framing: SseFraming = CHAT_FRAMING,
    ) -> None:
        super().__init__(content=None, media_type="text/event-stream")
        self._framing = framing
        self._stream = stream
        self._watch = watch
        self._window_ends = window_ends
        self._raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        self._raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return _SseASGI(self._stream, self._watch, self._raw_headers, self._framing, self._window_ends)
