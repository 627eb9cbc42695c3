"""A WebSocket consumer that cannot keep up is closed with 1013, not buffered without bound."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider


@pytest.fixture(scope="module")
def small_queue(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    settings = make_settings(fake_provider.base_url, websocket={"send_queue_frames": 8, "max_inflight": 8})
    server = ServerThread(settings).start()
    yield server
    server.stop()


async def _sockets_open(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "chat_websocket_connections_active":
            return sum(sample.value for sample in family.samples)
    return 0.0


async def test_consumer_that_does_not_read_is_closed_1013(small_queue: ServerThread, fake: FakeProvider) -> None:
    sock = socket.create_connection(("127.0.0.1", small_queue.port))
    async with (
        httpx.AsyncClient(base_url=small_queue.base_url, timeout=5) as client,
        connect(small_queue.ws_url, sock=sock, max_queue=1) as ws,
    ):
        # Endless (200 MB): more than the kernel's and the transport's buffers hold, so frames back up in
        # the socket's own queue, and it overflows.
        request = {"model": "firehose_endless", "messages": [{"role": "user", "content": "go"}]}
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "f", "request": request}))
        # Read nothing: once its send queue is full the server gives up on this socket.
        await fake.await_request(1, timeout=5)
        deadline = time.monotonic() + 15
        while await _sockets_open(client) > 0:
            assert time.monotonic() < deadline, "the server kept a consumer that reads nothing"
            await asyncio.sleep(0.05)
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1013
