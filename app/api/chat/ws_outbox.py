"""One WebSocket's outgoing frames: a bounded queue drained by one sender task.

Every request on the socket queues its frames here (``send`` never waits), so a consumer that cannot
keep up fills the queue instead of memory: the socket is then closed with 1013 and ``send`` raises
``SlowConsumer`` to the request that found it full.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import WebSocket

from app.domain.events import ClientLeft

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013


class SlowConsumer(ClientLeft):
    """The socket's send queue is full: the consumer is closed with 1013."""


class Outbox:
    __slots__ = ("_queue", "_sender", "_socket", "close_code", "closing")

    def __init__(self, socket: WebSocket[Any, Any, Any], max_frames: int) -> None:
        self._socket = socket
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_frames)
        self._sender: asyncio.Task[None] | None = None
        #: Nothing more is queued (the session is ending, or the consumer was too slow).
        self.closing = False
        #: The code the socket closes with when the session ends, when one was decided.
        self.close_code: int | None = None

    def start(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="ws-sender")

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close_code = CLOSE_TRY_AGAIN_LATER
            self.closing = True
            # Closing the socket ends the session's receive loop, which cleans up the rest.
            asyncio.get_running_loop().create_task(self._close_slow())
            raise SlowConsumer from None

    async def flush(self, deadline: float) -> None:
        """Until the sender has sent what is queued, or the loop's clock reaches ``deadline``."""
        loop = asyncio.get_running_loop()
        while not self._queue.empty() and loop.time() < deadline:
            await asyncio.sleep(0.02)

    async def close_now(self, code: int, reason: str) -> None:
        self.close_code = code
        with contextlib.suppress(Exception):
            await self._socket.close(code=code, reason=reason)

    async def stop(self) -> None:
        """The session ended: stop sending (what is still queued is dropped) and close the socket
        with the code that was decided, if one was."""
        self.closing = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self.close_code is not None:
            with contextlib.suppress(Exception):
                await self._socket.close(code=self.close_code)

    async def _close_slow(self) -> None:
        with contextlib.suppress(Exception):
            await self._socket.close(code=CLOSE_TRY_AGAIN_LATER, reason="consumer too slow")

    async def _send_loop(self) -> None:
        queue = self._queue
        send = self._socket.send
        while True:
            frame = await queue.get()
            await send({"type": "websocket.send", "text": frame.decode(), "bytes": None})
