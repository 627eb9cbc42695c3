"""SSE framing of a chat stream's events (API.md 1.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from app.chat.stream import ChatStream, StreamEvent
from app.errors import GatewayError
from app.streaming.disconnect import DisconnectWatch

HEARTBEAT: bytes = b": keep-alive\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
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


class SseBody:
    """An SSE response body: the stream and the watch that notices the client leave."""

    __slots__ = ("stream", "watch")

    def __init__(self, stream: ChatStream, watch: DisconnectWatch) -> None:
        self.stream = stream
        self.watch = watch

    def __aiter__(self) -> AsyncIterator[bytes]:
        raise TypeError("an SseBody is written by EventStream, which also owns its disconnect watch")
