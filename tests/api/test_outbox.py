"""The socket's sender task when the socket is gone under it: the session still ends cleanly."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected

from app.api.outbox import Outbox


class _GoneSocket:
    """A socket whose server ``send`` finds the client gone (no direct path: every frame is queued)."""

    scope: dict[str, Any] = {"state": {}}

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, message: dict[str, Any]) -> None:
        self.sent += 1
        raise ClientDisconnected

    async def close(self, code: int = 1000, reason: str = "") -> None:
        return None


async def test_a_send_to_a_gone_client_ends_the_sender_and_stop_still_returns() -> None:
    socket = _GoneSocket()
    outbox = Outbox(socket, max_frames=8)  # type: ignore[arg-type]
    outbox.start()
    outbox.send(b"one")
    outbox.send(b"two")
    async with asyncio.timeout(5):
        while socket.sent == 0:
            await asyncio.sleep(0.01)
        await outbox.stop()  # the sender's failure is not the session's to raise
    assert socket.sent == 1  # it stopped at the first failed send
