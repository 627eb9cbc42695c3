"""SSE framing of a chat stream's events (API.md 1.1)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import msgspec

from app.chat.stream import CLIENT_DISCONNECTED, COMPLETED, ChatStream
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


async def sse_frames(stream: ChatStream) -> AsyncGenerator[bytes, None]:
    """The response body's frames; whatever ends them (end of stream, error, client gone) closes the stream."""
    sid = stream.id.encode()
    outcome = CLIENT_DISCONNECTED
    try:
        async for event in stream.events():
            stream.mark_first_byte()
            if event.chunk is not None:
                yield chunk_frame(sid, event.seq, event.chunk.raw)
            elif event.error is not None:
                outcome = event.error.outcome
                yield error_frame(sid, event.seq, event.error)
            else:
                outcome = COMPLETED
                yield done_frame(sid, event.seq)
    finally:
        # Synchronous on purpose: when the client has gone this runs inside a cancelled scope,
        # where any await would be cancelled again before the upstream call is closed.
        stream.close(outcome)


class SseBody:
    """An SSE response body: the stream, its frames, and the watch that notices the client leave."""

    __slots__ = ("frames", "stream", "watch")

    def __init__(self, stream: ChatStream, watch: DisconnectWatch) -> None:
        self.stream = stream
        self.frames = sse_frames(stream)
        self.watch = watch

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.frames
