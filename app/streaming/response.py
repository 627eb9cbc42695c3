"""The SSE response: writes an ``SseBody``'s frames, heartbeats while the provider is silent, and
lets the request's ``DisconnectWatch`` end it early.

Litestar's ``Stream`` opens an anyio task group per response to watch for the client leaving; here
the request's one watch (started by the handler) does that job. The watch is armed only while the
body waits for the stream's next event, so a client that leaves cancels that wait (and with it the
provider's stream) and the body's ``finally`` closes the chat stream at once. A client that leaves
while a frame is being written is noticed at the next event.

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

from app.chat.stream import CLIENT_DISCONNECTED, COMPLETED
from app.streaming.disconnect import ClientGone
from app.streaming.sse import HEARTBEAT, SseBody, chunk_frame, end_frame

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
        stream, watch = body.stream, body.watch
        sid = stream.id.encode()
        heartbeat = _Heartbeat(body, send)
        outcome = CLIENT_DISCONNECTED
        try:
            while True:
                with watch.guard():
                    event = await stream.next_event()
                if stream.first_byte_at is None:
                    stream.mark_first_byte()
                heartbeat.writing = True
                if event.chunk is not None:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": chunk_frame(sid, event.seq, event.chunk.raw),
                            "more_body": True,
                        }
                    )
                    heartbeat.writing = False
                    continue
                heartbeat.stop()
                outcome = COMPLETED if event.error is None else event.error.outcome
                await send({"type": "http.response.body", "body": end_frame(sid, event), "more_body": False})
                return
        except ClientGone:
            pass
        finally:
            heartbeat.stop()
            watch.stop()
            # Synchronous: when the client has gone this runs in a task whose cancellation is
            # still being unwound; closing cancels or schedules the upstream call's end at once.
            stream.close(outcome)


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
