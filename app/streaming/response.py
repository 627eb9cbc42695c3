"""The SSE response: writes an ``SseBody``'s frames, heartbeats while the provider is silent, and
lets the request's ``DisconnectWatch`` end it early.

Litestar's ``Stream`` opens an anyio task group per response to watch for the client leaving; here
the request's one watch (started by the handler) does that job. The watch is armed only while the
frames generator waits for the next event, so a client that leaves cancels the wait inside the
generator, whose ``finally`` closes the chat stream (and the upstream call) at once. A client that
leaves while a frame is being written is noticed at the next frame.

Heartbeats come from a timer that re-arms itself once per period (never per chunk) and, when the
stream has produced nothing for ``heartbeat_s`` and no frame is being written, writes the comment
from a short task of its own: every write is one whole SSE event, so a heartbeat can only ever land
between two events.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import HTTPResponseBodyEvent, Receive, Send

from app.streaming.disconnect import ClientGone
from app.streaming.sse import HEARTBEAT, SseBody

_END: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
_BEAT: HTTPResponseBodyEvent = {"type": "http.response.body", "body": HEARTBEAT, "more_body": True}


class _Heartbeat:
    """Writes ``: keep-alive`` after ``period`` seconds in which the stream produced no event."""

    __slots__ = ("_beating", "_last", "_loop", "_period", "_send", "_stream", "_timer", "writing")

    def __init__(self, body: SseBody, send: Send) -> None:
        self._loop = asyncio.get_running_loop()
        self._stream = body.stream
        self._send = send
        self._period = body.stream.deadlines.heartbeat_s
        self._last = self._loop.time()
        self._beating: asyncio.Task[None] | None = None
        self.writing = False  # set by the body loop around each frame's write
        self._timer = self._loop.call_at(self._last + self._period, self._check)

    def _check(self) -> None:
        quiet_since = max(self._stream.last_event_at, self._last)
        now = self._loop.time()
        if now - quiet_since >= self._period and not self.writing and self._beating is None:
            self._last = quiet_since = now
            self._beating = self._loop.create_task(self._beat())
        self._timer = self._loop.call_at(quiet_since + self._period, self._check)

    async def _beat(self) -> None:
        try:
            await self._send(_BEAT)
        except Exception:  # the client is gone: the body loop finds out on its own
            pass
        finally:
            self._beating = None

    def stop(self) -> None:
        self._timer.cancel()
        if self._beating is not None:
            self._beating.cancel()


class _EventStreamASGIResponse(ASGIStreamingResponse):
    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        body = cast(SseBody, self.iterator)
        frames, watch = body.frames, body.watch
        heartbeat = _Heartbeat(body, send)
        try:
            while True:
                try:
                    with watch.guard():
                        frame = await anext(frames)
                except StopAsyncIteration:
                    break
                heartbeat.writing = True
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                heartbeat.writing = False
            heartbeat.stop()
            await send(_END)
        except ClientGone:
            pass
        finally:
            heartbeat.stop()
            watch.stop()
            # A no-op when the frames ended; when the client left between frames, or a send failed,
            # this runs the generator's finally (which closes the chat stream) now, not at GC.
            await frames.aclose()


class EventStream(Stream):
    """``Stream`` for an ``SseBody``, with the request's disconnect watch instead of a task group."""

    __slots__ = ()

    def __init__(self, content: SseBody, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        # Same slots, one overridden method: re-classing avoids copying Litestar's constructor call.
        response.__class__ = _EventStreamASGIResponse
        return response
