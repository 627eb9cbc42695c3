"""One WebSocket request's frames: its chunks, then one done or error frame.

The writer only frames: its frames go to the socket's outbox (``app/api/outbox.py``), those of one
provider read (and a stream's end) together (``send_all``), which writes them at once, in one write,
when the socket takes them and queues them otherwise (a bounded queue: ``SlowConsumer`` when the
socket cannot keep up). Because that ``send`` is a plain call, a relayed stream's chunks can be pushed
from the provider connection's callback as SSE's are (``app/core/push.py``): ``write_now``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from app.api.chat.ws_frames import chunk_frame, done_frame, encode_id, error_frame
from app.api.outbox import Outbox, SlowConsumer
from app.domain.chunks import Usage
from app.domain.errors import GatewayError
from app.domain.events import StreamEvent

if TYPE_CHECKING:
    from app.core.stream import ChatStream

__all__ = ["RequestWriter", "SlowConsumer"]


class RequestWriter:
    __slots__ = ("_can_push", "_encoded_id", "_frame_id", "_held", "_send", "_send_all", "_sid")

    def __init__(self, outbox: Outbox, frame_id: str, stream_id: str) -> None:
        self._send = outbox.send
        self._send_all = outbox.send_all  # several frames in one write when the socket takes them
        self._frame_id = frame_id
        self._encoded_id = encode_id(frame_id)
        self._sid = stream_id.encode()
        self._can_push = outbox.can_push  # the session writes synchronously (``DirectSocket``)
        self._held: list[StreamEvent] = []

    # Pushed (``DirectWriter``): the socket's own queue absorbs a slow reader and bounds it with 1013,
    # so a write never holds the provider back here.

    def can_write_now(self) -> bool:
        return self._can_push

    def write_now(self, events: list[StreamEvent]) -> bool:
        self._send_all(self._frames(events))
        return True

    def _frames(self, events: list[StreamEvent]) -> list[bytes]:
        fid, sid = self._encoded_id, self._sid
        return [chunk_frame(fid, sid, event.seq, event.chunk.raw) for event in events if event.chunk is not None]

    def hold(self, events: list[StreamEvent]) -> None:
        self._held += events

    async def writable(self) -> None:
        return None

    async def chunk(self, seq: int, raw: bytes, more: bool) -> None:
        # Every frame is its own WebSocket message, written or queued at once (``app/api/outbox.py``).
        self._send(chunk_frame(self._encoded_id, self._sid, seq, raw))

    async def end(self, event: StreamEvent) -> None:
        # What was held for the end and the end itself: one write.
        frames = self._frames(self._held) if self._held else []
        self._held = []
        if event.error is not None:
            frames.append(error_frame(self._frame_id, event.error))
        else:
            frames.append(done_frame(self._frame_id, event.finish_reason, event.usage))
        self._send_all(frames)

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
