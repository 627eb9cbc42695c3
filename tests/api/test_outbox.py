"""The socket's outbox: its sender task when the socket is gone under it (the session still ends
cleanly), and several frames sent at once: in order, within the queue's bound."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.utils import ClientDisconnected

from app.api.outbox import Outbox, SlowConsumer


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


class _RecordingSocket:
    """A socket with no direct path whose server ``send`` records the texts (every frame is queued)."""

    scope: dict[str, Any] = {"state": {}}

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.texts.append(message["text"])

    async def close(self, code: int = 1000, reason: str = "") -> None:
        return None


async def test_send_all_without_a_direct_path_queues_the_frames_in_order() -> None:
    socket = _RecordingSocket()
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
    socket = _RecordingSocket()
    outbox = Outbox(socket, max_frames=2)  # type: ignore[arg-type]
    outbox.start()
    with pytest.raises(SlowConsumer):
        outbox.send_all([b"a", b"b", b"c"])
    assert outbox.closing
    outbox.send_all([b"d"])  # closing: nothing more is queued
    async with asyncio.timeout(5):
        await outbox.stop()
    assert "d" not in socket.texts
