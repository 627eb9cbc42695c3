"""SSE framing of a Responses stream (docs/responses.md): ``event: <type>``, ``id: <response id>:<n>``,
``data: <event JSON>``; no ``[DONE]``.

Two responses write it: ``ResponsesSseResponse`` drives a live chat stream through a writer that
turns each chunk into Responses events (``ResponseRun``), and ``ResponsesReplayResponse`` reads a
chat stream's log (a resume, or a background response's reader) through a fresh
``ResponseEvents`` and skips what the client already has. Both frame with ``sse_frame``, and the
translation is deterministic, so a replayed event is byte-identical to the live one.
Heartbeats are the chat SSE transport's (``: keep-alive`` while the upstream is silent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Response
from litestar.types import Message, Receive, Scope, Send

from app.api.chat.sse import HEARTBEAT, HELD_MAX, RAW_SEND
from app.api.chat.sse import _Heartbeat as Heartbeat
from app.api.responses.events import Event, ResponseEvents, sse_frames
from app.api.responses.service import ResponseRun
from app.api.status_window import wait_window
from app.core.follow import Follower
from app.core.stream import ChatStream
from app.domain.errors import GatewayError
from app.domain.events import CLIENT_DISCONNECTED, ClientLeft, StreamEvent
from app.resume.replay import Replay
from app.transport.direct_body import DirectBody
from app.transport.disconnect import DisconnectWatch

#: Events as SSE frames (``sse_frames`` itself: one call per chunk, not two).
frames = sse_frames


def _raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    raw = [(b"content-type", b"text/event-stream; charset=utf-8")]
    return raw + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class ResponsesSseWriter:
    """A chat stream's events written as Responses events (a ``StreamWriter``). Over uvicorn it can
    also write synchronously (``DirectWriter``), so a relayed stream's rest is pushed from the
    provider's connection as a chat stream's is (``app/core/push.py``)."""

    __slots__ = ("_direct", "_heartbeat", "_held", "_rid", "_run", "_send")

    def __init__(self, run: ResponseRun, stream: ChatStream, send: Send, direct: DirectBody | None = None) -> None:
        self._run = run
        self._rid = run.id.encode()
        self._send = send
        self._direct = direct
        self._heartbeat = Heartbeat(stream, send)
        self._held = b""

    def _frames(self, events: list[StreamEvent]) -> bytes:
        # The run's events as they are now (a run whose client left rebuilds them from the log).
        feed, rid = self._run.events.feed_sse, self._rid
        if len(events) == 1:  # the usual read: one chunk
            chunk = events[0].chunk
            return feed(rid, chunk.raw) if chunk is not None else b""
        return b"".join([feed(rid, e.chunk.raw) for e in events if e.chunk is not None])

    def can_write_now(self) -> bool:
        return self._direct is not None

    def write_now(self, events: list[StreamEvent]) -> bool:
        assert self._direct is not None
        data = self._frames(events)
        if self._held:
            data, self._held = self._held + data, b""
        return self._direct.write(data) if data else True

    def hold(self, events: list[StreamEvent]) -> None:
        self._held += self._frames(events)

    async def writable(self) -> None:
        assert self._direct is not None
        await self._direct.writable()

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        frame = self._run.events.feed_sse(self._rid, raw)
        if not frame or (more and len(self._held) < HELD_MAX):
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
        frame = self._held + frames(self._rid, await self._run.finish(event))
        self._held = b""
        await self._send({"type": "http.response.body", "body": frame, "more_body": False})

    def cancelled(self, stream: ChatStream) -> None:
        return None

    def stop(self) -> None:
        self._heartbeat.stop()


class _LiveASGI:
    __slots__ = ("_headers", "_run", "_stream", "_watch", "_window_ends")

    def __init__(
        self, run: ResponseRun, watch: DisconnectWatch, headers: list[tuple[bytes, bytes]], window_ends: float
    ) -> None:
        assert run.stream is not None
        self._run = run
        self._stream = run.stream
        self._watch = watch
        self._headers = headers
        self._window_ends = window_ends

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream, watch = self._stream, self._watch
        try:
            if not await wait_window(stream, watch, self._window_ends, scope, send):
                return
            start: Message = {"type": "http.response.start", "status": 200, "headers": self._headers}
            await send(start)
            raw_send: Send = scope.get("state", {}).get(RAW_SEND) or send
            writer = ResponsesSseWriter(self._run, stream, raw_send, DirectBody.of(raw_send))
            try:
                with self._run.writing():
                    await stream.pump(writer, watch.guard())
            except ClientLeft:
                return
            finally:
                writer.stop()
        except BaseException:
            stream.close(CLIENT_DISCONNECTED)
            raise
        finally:
            watch.stop()


class ResponsesSseResponse(Response[Any]):
    """A live Responses stream's answer; like chat's, it waits out its status window before it starts."""

    def __init__(self, run: ResponseRun, watch: DisconnectWatch, headers: dict[str, str], window_ends: float) -> None:
        super().__init__(content=None, media_type="text/event-stream")
        self._run = run
        self._watch = watch
        self._raw = _raw_headers(headers)
        self._window_ends = window_ends

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return _LiveASGI(self._run, self._watch, self._raw, self._window_ends)


class ResponseReplay:
    """A chat stream's log read as Responses events after ``after`` (a sequence number)."""

    def __init__(self, replay: Replay, events: ResponseEvents, after: int) -> None:
        self.replay = replay
        self.events = events
        self.after = after
        self.done = False

    def take(self) -> list[Event] | None:
        """The events the log holds now (possibly none: a chunk that stood for nothing); None: wait."""
        event = self.replay.take()
        if event is None:
            return None
        if event.chunk is not None:
            out = self.events.feed(event.chunk.raw)
        else:
            out = self.events.finish(event.error)
            self.done = True
        return [e for e in out if e[1] > self.after]

    def ready(self) -> list[Event]:
        """Everything already logged (read before the answer starts, to check the position)."""
        out: list[Event] = []
        while not self.done:
            events = self.take()
            if events is None:
                break
            out += events
        return out


class _ReplayASGI:
    __slots__ = ("_done", "_first", "_headers", "_heartbeat_s", "_reader", "_watch")

    def __init__(
        self,
        reader: ResponseReplay,
        first: list[Event],
        watch: DisconnectWatch,
        headers: list[tuple[bytes, bytes]],
        heartbeat_s: float,
        done: Callable[[], None] | None,
    ) -> None:
        self._reader = reader
        self._first = first
        self._watch = watch
        self._headers = headers
        self._heartbeat_s = heartbeat_s
        self._done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reader, watch = self._reader, self._watch
        rid = reader.events.response_id.encode()
        follower = Follower(reader.replay, self._heartbeat_s)
        try:
            start: Message = {"type": "http.response.start", "status": 200, "headers": self._headers}
            await send(start)
            raw: Send = scope.get("state", {}).get(RAW_SEND) or send
            held = frames(rid, self._first)
            while not reader.done:
                try:
                    logged = follower.batch()
                except GatewayError as exc:  # the reader fell behind a log trimmed under it: told so
                    held += frames(rid, reader.events.finish(exc), reader.after)
                    break
                if not logged:
                    if held:
                        await raw({"type": "http.response.body", "body": held, "more_body": True})
                        held = b""
                        follower.wrote()
                    if await follower.wait(watch.guard()):
                        await raw({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                        follower.wrote()
                    continue
                for event in logged:
                    if event.chunk is not None:
                        held += frames(rid, reader.events.feed(event.chunk.raw), reader.after)
                    else:
                        held += frames(rid, reader.events.finish(event.error), reader.after)
                        reader.done = True
                    if len(held) >= HELD_MAX:
                        await raw({"type": "http.response.body", "body": held, "more_body": True})
                        held = b""
                        follower.wrote()
            await raw({"type": "http.response.body", "body": held, "more_body": False})
        except ClientLeft:
            return
        finally:
            follower.close()
            watch.stop()
            if self._done is not None:
                self._done()


class ResponsesReplayResponse(Response[Any]):
    def __init__(
        self,
        reader: ResponseReplay,
        first: list[Event],
        watch: DisconnectWatch,
        headers: dict[str, str],
        heartbeat_s: float,
        done: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content=None, media_type="text/event-stream")
        self._args = (reader, first, watch, _raw_headers(headers), heartbeat_s, done)

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return _ReplayASGI(*self._args)
