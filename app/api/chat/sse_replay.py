"""The SSE response of a resume: a replay's events framed exactly as the live stream's.

The frames come from the same functions as ``SseWriter``'s (``chunk_frame``, ``end_frame``), so a
replayed event is byte-identical to what the original connection received. The start goes
through the middleware chain and the body straight to the server (``RAW_SEND``), as for a live
stream. The log is followed by the one ``Follower`` (``app/core/follow.py``), which also says when a
heartbeat comment is due (nothing written for ``heartbeat_s``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Response
from litestar.types import Message, Receive, Scope, Send

from app.api.chat.sse import HELD_MAX, RAW_SEND
from app.api.framing import framing_for
from app.core.follow import Follower
from app.domain.errors import GatewayError
from app.domain.events import ClientLeft, StreamEvent
from app.resume.replay import Replay
from app.transport.disconnect import DisconnectWatch


class _ReplayASGI:
    __slots__ = ("_done", "_headers", "_heartbeat_s", "_replay", "_watch")

    def __init__(
        self,
        replay: Replay,
        watch: DisconnectWatch,
        headers: list[tuple[bytes, bytes]],
        heartbeat_s: float,
        done: Callable[[], None] | None,
    ) -> None:
        self._done = done
        self._replay = replay
        self._watch = watch
        self._headers = headers
        self._heartbeat_s = heartbeat_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch = self._watch
        follower = Follower(self._replay, self._heartbeat_s)
        try:
            start: Message = {"type": "http.response.start", "status": 200, "headers": self._headers}
            await send(start)
            raw: Send = scope.get("state", {}).get(RAW_SEND) or send
            sid = self._replay.stream_id.encode()
            framing = framing_for(self._replay.format)  # a stream replays in the API's framing it was created in
            chunk_frame = framing.chunk
            last = 0  # the last event written
            while True:
                try:
                    events = follower.batch()
                except GatewayError as exc:  # the reader fell behind a log trimmed under it: told so
                    body = framing.end(sid, StreamEvent(last, error=exc))
                    await raw({"type": "http.response.body", "body": body, "more_body": False})
                    return
                if not events:
                    if await follower.wait(watch.guard()):
                        await raw({"type": "http.response.body", "body": framing.heartbeat, "more_body": True})
                        follower.wrote()
                    continue
                held = b""  # what the log holds now goes out together, in writes of up to HELD_MAX
                for event in events:
                    if event.chunk is None:
                        body = held + framing.end(sid, event)
                        await raw({"type": "http.response.body", "body": body, "more_body": False})
                        return
                    held += chunk_frame(sid, event.seq, event.chunk.raw)
                    last = event.seq
                    if len(held) >= HELD_MAX:
                        await raw({"type": "http.response.body", "body": held, "more_body": True})
                        held = b""
                if held:
                    await raw({"type": "http.response.body", "body": held, "more_body": True})
                follower.wrote()
        except ClientLeft:
            return
        finally:
            follower.close()
            watch.stop()
            if self._done is not None:
                self._done()  # the reader's stream slot (the key's concurrency lease) is free again


class ReplaySseResponse(Response[Any]):
    def __init__(
        self,
        replay: Replay,
        watch: DisconnectWatch,
        headers: dict[str, str],
        heartbeat_s: float,
        done: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content=None, media_type="text/event-stream")
        self._done = done
        self._replay = replay
        self._watch = watch
        self._heartbeat_s = heartbeat_s
        self._raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        self._raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return _ReplayASGI(self._replay, self._watch, self._raw_headers, self._heartbeat_s, self._done)
