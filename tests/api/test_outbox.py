"""The socket's outbox: its sender task when the socket is gone under it (the session still ends
cleanly), and several frames sent at once: in order, within the queue's bound."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.utils import ClientDisconnected

from app.api.outbox import Outbox, SlowConsumer


class _QueuedSocket:
    """A socket with no direct path (every frame is queued) whose server ``send`` records each text,
    or finds the client gone (``gone``)."""

    scope: dict[str, Any] = {"state": {}}

    def __init__(self, *, gone: bool = False) -> None:
        self.gone = gone
        self.texts: list[str] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.texts.append(message["text"])
        if self.gone:
            raise ClientDisconnected

    async def close(self, code: int = 1000, reason: str = "") -> None:
        return None


async def test_a_send_to_a_gone_client_ends_the_sender_and_stop_still_returns() -> None:
    socket = _QueuedSocket(gone=True)
    outbox = Outbox(socket, max_frames=8)  # type: ignore[arg-type]
    outbox.start()
    outbox.send(b"one")
    outbox.send(b"two")
    async with asyncio.timeout(5):
        while not socket.texts:
            await asyncio.sleep(0.01)
        await outbox.stop()  # the sender's failure is not the session's to raise
    assert socket.texts == ["one"]  # it stopped at the first failed send


async def test_send_all_without_a_direct_path_queues_the_frames_in_order() -> None:
    socket = _QueuedSocket()
    outbox = Outbox(socket, max_frames=8)  # type: ignore[arg-type]
    outbox.start()
    outbox.send(b"one")
    outbox.send_all([b"two", b"three"])
    outbox.send_all([])
    outbox.send(b"four")
    async with asyncio.timeout(5):
        while len(socket.texts) < 4:
            await asyncio.sleep(0.01)
        await outbox.stop()
    assert socket.texts == ["one", "two", "three", "four"]


async def test_send_all_past_the_queue_bound_is_a_slow_consumer() -> None:
    socket = _QueuedSocket()
    outbox = Outbox(socket, max_frames=2)  # type: ignore[arg-type]
    outbox.start()
    with pytest.raises(SlowConsumer):
        outbox.send_all([b"a", b"b", b"c"])
    assert outbox.closing
    outbox.send_all([b"d"])  # closing: nothing more is queued
    async with asyncio.timeout(5):
        await outbox.stop()
    assert "d" not in socket.texts
