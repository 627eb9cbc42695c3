"""SSE framing of a Messages API stream: Anthropic's named events, with ``id:`` lines.

Each logged event's bytes are one Anthropic event's JSON, ``{"type": "<event>", ...}`` (the
translation writes ``type`` first), so the event name is read off its start rather than decoded.
The stream's done event needs no frame (``message_stop`` was the last chunk); an error is
``event: error`` with Anthropic's error body. While the provider is silent the heartbeat is
Anthropic's ``ping`` event.
"""

from __future__ import annotations

from typing import Final

from app.api.messages.errors import anthropic_error_body
from app.domain.events import StreamEvent

PING: Final = b'event: ping\ndata: {"type": "ping"}\n\n'
_TYPE_AT: Final = len(b'{"type":"')


def event_name(data: bytes) -> bytes:
    end = data.find(b'"', _TYPE_AT)
    return data[_TYPE_AT:end] if data.startswith(b'{"type":"') and end > 0 else b"message"


_DELTA: Final = b'{"type":"content_block_delta"'
_DELTA_FRAME: Final = b"event: content_block_delta\nid: %b:%d\ndata: %b\n\n"


class AnthropicFraming:
    heartbeat = PING

    @staticmethod
    def chunk(stream_id: bytes, seq: int, data: bytes) -> bytes:
        if data.startswith(_DELTA):  # all but a few events of a stream
            return _DELTA_FRAME % (stream_id, seq, data)
        return b"event: %b\nid: %b:%d\ndata: %b\n\n" % (event_name(data), stream_id, seq, data)

    @staticmethod
    def end(stream_id: bytes, event: StreamEvent) -> bytes:
        if event.error is None:
            return b""
        return b"event: error\nid: %b:%d\ndata: %b\n\n" % (stream_id, event.seq, anthropic_error_body(event.error))


ANTHROPIC_FRAMING: Final = AnthropicFraming()
