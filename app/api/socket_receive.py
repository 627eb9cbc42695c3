"""A WebSocket session's incoming frames: read from the server's queue, then from the connection.

uvicorn queues each client message for the app's ``receive()`` and pauses reading until it is taken,
so a frame read that way costs the session's loop a wake-up (a loop turn, several coroutine frames)
and its request a second turn before anything is sent to the provider. Once nothing is queued (so that
no message overtakes one queued before it) the session takes them from the connection's callback
instead (``Outbox.take_messages``); the loop then only waits for the disconnect, which the
handler's own closes (``Outbox.close_at_once``) also put in the queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from litestar import WebSocket

from app.api.outbox import CLOSE_GOING_AWAY, CLOSE_TOO_BIG, Outbox


async def receive_frames(
    socket: WebSocket[Any, Any, Any], outbox: Outbox, max_bytes: int, take: Callable[[str | bytes], bool]
) -> None:
    """Hand each client frame of at most ``max_bytes`` (UTF-8) to ``take`` (False: the session must
    end, with the outbox's close code if one was decided) until the client leaves or the outbox
    closes; a larger frame ends the session with 1009."""

    def taken(data: str | bytes) -> bool:
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if size > max_bytes:
            outbox.close_code = CLOSE_TOO_BIG
            return False
        return take(data)

    def on_message(data: str | bytes) -> None:
        if not outbox.closing and not taken(data):
            outbox.close_at_once(outbox.close_code or CLOSE_GOING_AWAY)

    direct = False
    try:
        while not outbox.closing:
            if not direct:
                direct = outbox.take_messages(on_message)
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = cast("str | bytes | None", message.get("text"))
            if data is None:
                data = cast(bytes, message.get("bytes") or b"")
            if not taken(data):
                return
    finally:
        if direct:
            outbox.release_messages()  # the handler holds the session
