"""One WebSocket request's frames: its chunks, then one done or error frame.

The writer only frames: every frame goes to the socket's ``send`` (``app/api/outbox.py``), which writes it at once when
the socket takes it and queues it otherwise (a bounded queue: ``SlowConsumer`` when the socket
cannot keep up). Because that ``send`` is a plain call, a relayed stream's chunks can be pushed
from the provider connection's callback as SSE's are (``app/core/push.py``): ``write_now``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.api.chat.ws_frames import chunk_frame, done_frame, encode_id, error_frame
from app.api.outbox import SlowConsumer
from app.domain.chunks import Usage
from app.domain.errors import GatewayError
from app.domain.events import StreamEvent

if TYPE_CHECKING:
    from app.core.stream import ChatStream

__all__ = ["RequestWriter", "SlowConsumer"]


class RequestWriter:
    __slots__ = ("_can_push", "_encoded_id", "_frame_id", "_held", "_send", "_sid")

    def __init__(self, send: Callable[[bytes], None], frame_id: str, stream_id: str, *, can_push: bool = False) -> None:
        self._send = send
        self._frame_id = frame_id
        self._encoded_id = encode_id(frame_id)
        self._sid = stream_id.encode()
        self._can_push = can_push  # the session writes synchronously (``DirectSocket``)
        self._held: list[StreamEvent] = []

    # Pushed (``DirectWriter``): the socket's own queue absorbs a slow reader and bounds it with 1013,
    # so a write never holds the provider back here.

    def can_write_now(self) -> bool:
        return self._can_push

    def write_now(self, events: list[StreamEvent]) -> bool:
        send, fid, sid = self._send, self._encoded_id, self._sid
        for event in events:
            if event.chunk is not None:
                send(chunk_frame(fid, sid, event.seq, event.chunk.raw))
        return True

    def hold(self, events: list[StreamEvent]) -> None:
        self._held += events

    async def writable(self) -> None:
        return None

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        # Every frame is its own WebSocket message, written or queued at once (``app/api/outbox.py``).
        self._send(chunk_frame(self._encoded_id, self._sid, seq, raw))

    async def end(self, event: StreamEvent) -> None:
        if self._held:
            held, self._held = self._held, []
            self.write_now(held)
        if event.error is not None:
            self._send(error_frame(self._frame_id, event.error))
        else:
            self._send(done_frame(self._frame_id, event.finish_reason, event.usage))

    def cancelled(self, stream: ChatStream) -> None:
        self.answer_cancelled(stream.usage)

    def answer_cancelled(self, usage: Usage | None) -> None:
        """The request's one done frame for a cancel (best effort: a full queue is closing the socket)."""
        with contextlib.suppress(SlowConsumer):
            self._send(done_frame(self._frame_id, "cancelled", usage))

    def error(self, error: GatewayError) -> None:
        """The request's one error frame, when it ends before its stream could (best effort)."""
        with contextlib.suppress(SlowConsumer):
            self._send(error_frame(self._frame_id, error))
