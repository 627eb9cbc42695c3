"""One WebSocket request's frames (API.md 2): its chunks, then one done or error frame.

The writer only frames: every frame goes to the session's bounded send queue (``send``), which
raises ``SlowConsumer`` when the socket cannot keep up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from app.api.chat.ws_frames import chunk_frame, done_frame, encode_id, error_frame
from app.core.stream import ChatStream
from app.domain.events import ClientLeft, StreamEvent


class SlowConsumer(ClientLeft):
    """The socket's send queue is full: the consumer is closed with 1013."""


class RequestWriter:
    __slots__ = ("_encoded_id", "_frame_id", "_send", "_sid")

    def __init__(self, send: Callable[[bytes], None], frame_id: str, stream_id: str) -> None:
        self._send = send
        self._frame_id = frame_id
        self._encoded_id = encode_id(frame_id)
        self._sid = stream_id.encode()

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        # Every frame is its own WebSocket message: queued at once (the socket's writer task sends them).
        self._send(chunk_frame(self._encoded_id, self._sid, seq, raw))

    async def end(self, event: StreamEvent) -> None:
        if event.error is not None:
            self._send(error_frame(self._frame_id, event.error))
        else:
            self._send(done_frame(self._frame_id, event.finish_reason, event.usage))

    def cancelled(self, stream: ChatStream) -> None:
        with contextlib.suppress(SlowConsumer):
            self._send(done_frame(self._frame_id, "cancelled", stream.usage))
