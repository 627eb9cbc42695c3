"""One WebSocket's outgoing frames: written at once when the socket takes them, else a bounded
queue drained by one sender task.

Every request on the socket hands its frames here (``send`` never waits). While the socket's buffer
has room and nothing is queued, a frame is written on the spot (``DirectSocket``: no task wake-up,
no coroutine per frame, which is what lets a relayed stream's chunks be pushed from the provider's
callback); otherwise it is queued behind the others, in order. A consumer that cannot keep up fills
the queue instead of memory: the socket is then closed with 1013 and ``send`` raises
``SlowConsumer`` to the request that found it full.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from litestar import WebSocket

from app.api.chat.sse import RAW_SEND
from app.domain.events import ClientLeft
from app.transport.direct_socket import DirectSocket

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN_LATER = 1013


class SlowConsumer(ClientLeft):
    """The socket's send queue is full: the consumer is closed with 1013."""


class Outbox:
    __slots__ = ("_direct", "_queue", "_sender", "_sending", "_socket", "close_code", "closing")

    def __init__(self, socket: WebSocket[Any, Any, Any], max_frames: int) -> None:
        self._socket = socket
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=max_frames)
        self._sender: asyncio.Task[None] | None = None
        self._direct: DirectSocket | None = None  # once the handshake is done (``start``)
        self._sending = False  # the sender is writing a queued frame: later ones queue behind it
        #: Nothing more is queued (the session is ending, or the consumer was too slow).
        self.closing = False
        #: The code the socket closes with when the session ends, when one was decided.
        self.close_code: int | None = None

    @property
    def can_push(self) -> bool:
        """Frames are written synchronously when the socket takes them."""
        return self._direct is not None

    def start(self) -> None:
        """After the handshake: the server's own send is in the scope (the request-id middleware's)."""
        self._direct = DirectSocket.of(self._socket.scope.get("state", {}).get(RAW_SEND))
        self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="ws-sender")

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        direct = self._direct
        if direct is not None and not self._sending and self._queue.empty() and direct.can_write():
            direct.write_text(frame)
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.close_code = CLOSE_TRY_AGAIN_LATER
            self.closing = True
            # Closing the socket ends the session's receive loop, which cleans up the rest.
            asyncio.get_running_loop().create_task(self._close_slow())
            raise SlowConsumer from None

    def send_all(self, frames: list[bytes]) -> None:
        """``frames`` in order, as ``send`` would send them one by one, but in one write when the
        socket takes them now: the frames of one provider read cost one system call, not one each."""
        if self.closing or not frames:
            return
        direct = self._direct
        if direct is not None and not self._sending and self._queue.empty() and direct.can_write():
            direct.write_texts(frames)
            return
        for frame in frames:
            self.send(frame)

    def take_messages(self, handler: Callable[[str | bytes], None]) -> bool:
        """The client's messages to ``handler`` from the connection's callback, when the socket
        allows it now (``DirectSocket.take_messages``); False: keep receiving them."""
        return self._direct is not None and self._direct.take_messages(handler)

    def release_messages(self) -> None:
        if self._direct is not None:
            self._direct.release_messages()

    def close_at_once(self, code: int, reason: str = "") -> None:
        """Decide the close and send it now, from a plain call (a message handler): the server's
        receive queue then carries the disconnect that ends the session's loop."""
        self.close_code = code
        self.closing = True
        if self._direct is not None:
            self._direct.close(code, reason)

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
        if self.close_code is not None and (self._direct is None or not self._direct.close_sent):
            with contextlib.suppress(Exception):
                await self._socket.close(code=self.close_code)

    async def _close_slow(self) -> None:
        if self._direct is not None:
            self._direct.close(CLOSE_TRY_AGAIN_LATER, "consumer too slow")  # not behind the full buffer
            return
        with contextlib.suppress(Exception):
            await self._socket.close(code=CLOSE_TRY_AGAIN_LATER, reason="consumer too slow")

    async def _send_loop(self) -> None:
        queue = self._queue
        send = self._socket.send
        while True:
            frame = await queue.get()
            self._sending = True
            try:
                await send({"type": "websocket.send", "text": frame.decode(), "bytes": None})
            except OSError:  # the client is gone (uvicorn's ClientDisconnected): the receive loop ends the session
                return
            finally:
                self._sending = False
