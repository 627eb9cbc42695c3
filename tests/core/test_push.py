"""A relayed SSE stream's rest pushed from the provider's connection (app/core/push.py), and the
direct body writer it writes through (app/transport/direct_body.py), under real uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.protocol import CLOSING, OPEN
from websockets.server import ServerProtocol

from app.transport.direct_body import DirectBody
from app.transport.direct_socket import DirectSocket, text_frame
from app.transport.guarded import ConnectionLimits, GatewayConfig, GuardedWebSocketProtocol
from tests.conftest import ServerThread
from tests.helpers.fake_provider import DEFAULT_CONTENT, FakeProvider
from tests.helpers.sse import chat_body


def _events(body: bytes) -> list[dict[str, str]]:
    """SSE events as field -> value (one line each: the gateway's frames have no multi-line data)."""
    events = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if "data" in fields:
            events.append(fields)
    return events


def _path(gateway: ServerThread) -> str:
    return "fast" if gateway.settings.models.deployments[1].fast_path else "full"


async def test_a_relayed_stream_is_pushed_after_its_first_chunk(gateway: ServerThread, fake: FakeProvider) -> None:
    # "silent": two chunks, a second of silence, the rest. During the silence the stream is
    # looked at on the server's loop: relayed, it is pushed; through LiteLLM's iterator, pulled.
    services = gateway.app.state.services
    headers = {"Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=chat_body("silent", stream=True), headers=headers) as r,
    ):
        stream_id = r.headers["x-stream-id"]
        body = b""
        chunks = r.aiter_bytes()
        async with asyncio.timeout(5):
            while body.count(b"\n\n") < 2:
                body += await anext(chunks)

        async def pushed() -> bool:
            log = services.resumes.local.get(stream_id)
            return log is not None and log.stream is not None and log.stream._push is not None

        was_pushed = await asyncio.to_thread(gateway.call, pushed())
        async for piece in chunks:
            body += piece
    events = _events(body)
    assert was_pushed is (_path(gateway) == "fast")
    assert events[-1]["data"] == "[DONE]"
    assert [e["id"] for e in events] == [f"{stream_id}:{i}" for i in range(1, len(events) + 1)]
    deltas = [json.loads(e["data"])["choices"][0]["delta"] for e in events[:-1]]
    assert "".join(d.get("content") or "" for d in deltas) == "".join(DEFAULT_CONTENT)


# -- DirectBody on its own, under uvicorn's HTTP/1.1 cycle -----------------------------------------


async def _direct_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    direct = DirectBody.of(send)
    wrapped = DirectBody.of(lambda message: send(message))  # not the server's own send: no direct path
    assert wrapped is None
    assert direct is not None
    for piece in (b"one ", b"two ", b"three "):
        assert direct.write(piece)
    await send({"type": "http.response.body", "body": b"end", "more_body": False})


@contextlib.asynccontextmanager
async def _serving(config: uvicorn.Config) -> AsyncIterator[int]:
    """``config``'s app served on a loopback port of its own for the block (started within 10 s,
    stopped after it); yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    serving = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def test_direct_body_writes_chunks_and_the_cycle_still_ends_the_response() -> None:
    config = uvicorn.Config(_direct_app, http="httptools", lifespan="off", log_level="warning")
    async with _serving(config) as port, asyncio.timeout(10):
        # Two requests on one kept-alive connection: the second proves the first ended cleanly.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            first = await client.get("/")
            second = await client.get("/")
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.text == "one two three end"


def test_direct_body_is_only_for_the_server_cycle() -> None:
    async def send(message: Any) -> None:
        return None

    assert DirectBody.of(send) is None
    assert DirectBody.of(None) is None


# -- the same push over a WebSocket, and DirectSocket under uvicorn's sans-I/O protocol -------------


async def test_a_relayed_websocket_stream_is_pushed_after_its_first_chunk(
    gateway: ServerThread, fake: FakeProvider
) -> None:
    services = gateway.app.state.services
    frame = {"type": "chat.completion.create", "id": "p1", "request": chat_body("silent")}
    frames: list[dict[str, Any]] = []
    async with connect(gateway.ws_url, subprotocols=["chat.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(frame))
        async with asyncio.timeout(10):
            while len(frames) < 2:
                frames.append(json.loads(await ws.recv()))
            stream_id = frames[0]["event_id"].split(":")[0]

            async def pushed() -> bool:
                log = services.resumes.local.get(stream_id)
                return log is not None and log.stream is not None and log.stream._push is not None

            was_pushed = await asyncio.to_thread(gateway.call, pushed())
            while frames[-1]["type"] != "chat.completion.done":
                frames.append(json.loads(await ws.recv()))
    assert was_pushed is (_path(gateway) == "fast")
    chunks = frames[:-1]
    assert [f["event_id"] for f in chunks] == [f"{stream_id}:{i}" for i in range(1, len(chunks) + 1)]
    text = "".join(f["chunk"]["choices"][0]["delta"].get("content") or "" for f in chunks if f["chunk"]["choices"])
    assert text == "".join(DEFAULT_CONTENT)
    assert frames[-1]["finish_reason"] == "stop"


async def _socket_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    assert DirectSocket.of(send) is None  # before the handshake: only send may answer it
    await send({"type": "websocket.accept"})
    direct = DirectSocket.of(send)
    assert direct is not None
    assert DirectSocket.of(lambda message: send(message)) is None  # not the server's own send
    for text in _DIRECT_TEXTS:
        assert direct.can_write()
        direct.write_text(text.encode())
    direct.write_texts([text.encode() for text in _BATCH_TEXTS])  # several messages, one write
    await send({"type": "websocket.send", "text": "four"})  # the protocol's own send still works after it
    await send({"type": "websocket.close", "code": 1000})
    assert not direct.can_write()


#: Written by DirectSocket: short ones, and lengths either side of the 7-, 16- and 64-bit length forms
#: (UTF-8 that is not ASCII, so characters and bytes differ).
_DIRECT_TEXTS = ["one", "two", "é" * 62 + "x", "é" * 63, "x" * 65_535, "é" * 32_768, "three"]
#: Written by one ``write_texts``: each its own message.
_BATCH_TEXTS = ["b1", "", "é" * 200, "b4"]


def test_a_socket_whose_peer_is_closing_takes_no_message() -> None:
    # Between the peer's close frame (uvicorn answers it and closes the transport) and the transport's
    # loss (a loop turn later) only the connection's state says so: a write then would raise
    # InvalidState in the writer of a pushed stream, and end it as the provider's failure.
    conn = ServerProtocol()
    conn.state = OPEN
    writable = asyncio.Event()
    writable.set()
    protocol = SimpleNamespace(
        conn=conn, transport=None, writable=writable, disconnected=False, close_sent=False, initial_response=None
    )
    direct = DirectSocket(protocol)  # type: ignore[arg-type]
    assert direct.can_write()
    conn.state = CLOSING
    assert not direct.can_write()


class _Writes:
    """A transport that records its writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


@pytest.mark.parametrize("deflate", [False, True])
def test_write_texts_is_one_write_of_the_frames_the_connection_would_send(deflate: bool) -> None:
    # The events of one provider read go out as one system call, each still its own message.
    texts = [b"one", b"", b"x" * 200, "\u00e9".encode() * 70_000]
    conn = ServerProtocol(extensions=[_deflate()] if deflate else None)
    conn.state = OPEN
    expected = ServerProtocol(extensions=[_deflate()] if deflate else None)
    expected.state = OPEN
    for text in texts:
        expected.send_text(text)
    writable = asyncio.Event()
    writable.set()
    transport = _Writes()
    protocol = SimpleNamespace(
        conn=conn, transport=transport, writable=writable, disconnected=False, close_sent=False, initial_response=None
    )
    DirectSocket(protocol).write_texts(texts)  # type: ignore[arg-type]
    assert transport.writes == [b"".join(expected.data_to_send())]


def _deflate() -> PerMessageDeflate:
    return PerMessageDeflate(False, False, 15, 15)


def test_text_frame_is_the_frame_websockets_would_send() -> None:
    for size in (0, 1, 125, 126, 127, 65_535, 65_536, 70_000):
        payload = b"x" * size
        protocol = ServerProtocol()
        protocol.state = OPEN
        protocol.send_text(payload)
        assert text_frame(payload) == b"".join(protocol.data_to_send()), size


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_direct_socket_writes_messages_in_order_with_the_protocols_own(compression: str | None) -> None:
    # Without an extension DirectSocket frames the messages itself; with permessage-deflate the
    # connection's own framing compresses them.
    config = uvicorn.Config(_socket_app, ws="websockets-sansio", lifespan="off", log_level="warning")
    async with _serving(config) as port, asyncio.timeout(10):
        async with connect(f"ws://127.0.0.1:{port}/", compression=compression) as ws:
            received = [await ws.recv() for _ in range(len(_DIRECT_TEXTS) + len(_BATCH_TEXTS) + 1)]
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
    assert received == [*_DIRECT_TEXTS, *_BATCH_TEXTS, "four"]


def _taking_app(taken: list[str | bytes], queued: list[dict[str, Any]]) -> Any:
    """An app that reads the first message from its queue, then takes the rest from the connection's
    callback (``take_messages``), answering ``last`` with what the handler got."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        direct = DirectSocket.of(send)
        assert direct is not None
        queued.append(await receive())  # the first one, through the queue

        def handler(message: str | bytes) -> None:
            taken.append(message)
            if message == "last":
                direct.write_text(json.dumps([m if isinstance(m, str) else m.hex() for m in taken]).encode())

        assert direct.take_messages(handler)
        direct.write_text(b"taking")
        queued.append(await receive())  # nothing but the disconnect comes through the queue now
        direct.release_messages()

    return app


async def test_messages_taken_from_the_connection_come_in_order_and_only_the_disconnect_is_queued() -> None:
    taken: list[str | bytes] = []
    queued: list[dict[str, Any]] = []
    config = GatewayConfig(
        _taking_app(taken, queued), connection_limits=ConnectionLimits(), lifespan="off", log_level="warning"
    )
    async with _serving(config) as port, asyncio.timeout(10):
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send("first")
            assert await ws.recv() == "taking"
            for message in ("two", b"\x00\xff", "é" * 40_000, "last"):
                await ws.send(message)
            answered = json.loads(await ws.recv())
        while len(queued) < 2:
            await asyncio.sleep(0.01)
    assert answered == ["two", "00ff", "é" * 40_000, "last"]
    assert queued[0] == {"type": "websocket.receive", "text": "first"}
    assert queued[1]["type"] == "websocket.disconnect"


async def test_messages_are_not_taken_while_one_is_queued() -> None:
    # A message already queued for the app's receive() would be overtaken by the ones the handler
    # takes: the switch waits until the queue is empty, and is undone by release_messages.
    config = GatewayConfig(_socket_app, connection_limits=ConnectionLimits(), lifespan="off", log_level="warning")
    protocol = GuardedWebSocketProtocol(config, ServerState(), {})
    protocol.transport = _Writes()  # type: ignore[assignment]
    direct = DirectSocket(protocol)
    protocol.queue.put_nowait({"type": "websocket.receive", "text": "queued"})
    assert not direct.take_messages(lambda message: None)
    assert protocol.on_message is None
    await protocol.queue.get()
    assert direct.take_messages(print)
    assert protocol.on_message is print
    direct.release_messages()
    assert protocol.on_message is None
