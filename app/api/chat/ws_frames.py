"""WebSocket frames (API.md 2): a tagged union decoded by one typed decoder, and the server's frames."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.domain.chat_request import check_depth
from app.domain.chunks import Usage
from app.domain.errors import ErrorObject, GatewayError, InvalidRequest

FrameId = Annotated[str, msgspec.Meta(max_length=256)]


class CreateFrame(msgspec.Struct, tag="chat.completion.create", tag_field="type", forbid_unknown_fields=False):
    id: FrameId
    request: dict[str, Any]


class CancelFrame(msgspec.Struct, tag="chat.completion.cancel", tag_field="type"):
    id: FrameId


class ResumeFrame(msgspec.Struct, tag="chat.completion.resume", tag_field="type"):
    """API.md 2: 1.3 over a socket, under a new client id; no ``last_event_id`` -> from the start."""

    id: FrameId
    stream_id: Annotated[str, msgspec.Meta(max_length=128)]
    last_event_id: Annotated[str, msgspec.Meta(max_length=160)] | None = None


ClientFrame = CreateFrame | CancelFrame | ResumeFrame


class DoneFrame(msgspec.Struct, tag="chat.completion.done", tag_field="type"):
    id: str
    finish_reason: str | None
    usage: dict[str, int] | None


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type"):
    id: str | None
    status: int
    error: ErrorObject


class FrameError(Exception):
    """A frame that cannot be read; ``frame_id`` is the client's id when one could be recovered."""

    def __init__(self, message: str, frame_id: str | None) -> None:
        super().__init__(message)
        self.frame_id = frame_id


_client_decoder = msgspec.json.Decoder(ClientFrame)
_loose_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def decode_client_frame(data: str | bytes) -> ClientFrame:
    raw = data.encode() if isinstance(data, str) else data
    try:
        check_depth(raw, "frame")
        return _client_decoder.decode(raw)
    except InvalidRequest as exc:
        raise FrameError(exc.message, None) from exc
    except RecursionError as exc:
        raise FrameError("The frame is nested too deeply.", None) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        frame_id: str | None = None
        try:
            loose = _loose_decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise FrameError(f"The frame is not valid JSON: {str(exc)[:200]}", None) from exc
        if isinstance(loose, dict) and isinstance(loose.get("id"), str) and len(loose["id"]) <= 256:
            frame_id = loose["id"]
        raise FrameError(f"Invalid frame: {str(exc)[:300]}", frame_id) from exc


def chunk_frame(frame_id: bytes, stream_id: bytes, seq: int, raw_chunk: bytes) -> bytes:
    """``frame_id`` is the JSON-encoded client id; ``stream_id`` is hex (nothing to escape); the
    chunk's bytes are embedded without re-encoding. ``event_id`` is the position a resume starts from."""
    return b'{"type":"chat.completion.chunk","id":%b,"event_id":"%b:%d","chunk":%b}' % (
        frame_id,
        stream_id,
        seq,
        raw_chunk,
    )


def encode_id(frame_id: str) -> bytes:
    return _encoder.encode(frame_id)


def done_frame(frame_id: str, finish_reason: str | None, usage: Usage | None) -> bytes:
    usage_obj = (
        {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        }
        if usage is not None
        else None
    )
    return _encoder.encode(DoneFrame(id=frame_id, finish_reason=finish_reason, usage=usage_obj))


def error_frame(frame_id: str | None, error: GatewayError) -> bytes:
    return _encoder.encode(ErrorFrame(id=frame_id, status=error.status, error=error.body().error))
