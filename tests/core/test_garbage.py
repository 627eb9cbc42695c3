"""A finished request leaves no reference cycle among the gateway's objects.

Reference counting frees an acyclic request graph the moment its last user lets go. A cycle keeps
the whole graph (stream, relay, response writer, request scope) alive until the cyclic collector
walks it, which is CPU taken from live streams and memory held in the meantime: on the relayed SSE
path, before these cycles were broken, the collector was ~8% of the gateway's samples at c=32 and
every request left ~64 cyclic objects behind.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.api.test_websocket import _task_count, create, until_end
from tests.conftest import ServerThread, wait_until
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the cyclic collector would free from now on, kept for inspection instead."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def _ours(garbage: list[object]) -> Counter[str]:
    return Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage if type(o).__module__.startswith("app.")
    )


async def _requests_done(gateway: ServerThread) -> None:
    # The access log and the stream's close run after the body.
    await wait_until(lambda: not gateway.server.server_state.tasks, 5, "the server's request tasks to end")


async def _sse(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    headers = {"Accept": "text/event-stream"}
    async with client.stream(
        "POST", "/v1/chat/completions", json=chat_body("normal", stream=True), headers=headers
    ) as r:
        body = b"".join([piece async for piece in r.aiter_bytes()])
    assert r.status_code == 200 and body.endswith(b"data: [DONE]\n\n")


async def _json(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    r = await client.post("/v1/chat/completions", json=chat_body("normal"))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


async def _left_mid_stream(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    headers = {"Accept": "text/event-stream"}
    async with client.stream(
        "POST", "/v1/chat/completions", json=chat_body("silent", stream=True), headers=headers
    ) as r:
        async for piece in r.aiter_bytes():
            if b"data: " in piece:
                break  # leaving the block closes the connection mid-stream


async def _provider_error(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    headers = {"Accept": "text/event-stream"}
    r = await client.post("/v1/chat/completions", json=chat_body("rate_limited", stream=True), headers=headers)
    assert r.status_code == 429


async def _bad_body(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    r = await client.post("/v1/chat/completions", json={"model": "normal", "messages": "not a list"})
    assert r.status_code == 400


async def _responses_sse(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    body = {"model": "normal", "input": "hi", "stream": True}
    async with client.stream("POST", "/v1/responses", json=body) as r:
        text = b"".join([piece async for piece in r.aiter_bytes()])
    assert r.status_code == 200 and b"response.completed" in text


async def _responses_json(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    r = await client.post("/v1/responses", json={"model": "normal", "input": "hi"})
    assert r.status_code == 200 and r.json()["status"] == "completed"


async def _messages_sse(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    body = {"model": "normal", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with client.stream("POST", "/v1/messages", json=body) as r:
        text = b"".join([piece async for piece in r.aiter_bytes()])
    assert r.status_code == 200 and b"message_stop" in text


async def _connections_gone(gateway: ServerThread) -> None:
    # A connection's end is what is looked at: wait for the server to see it.
    await wait_until(lambda: not gateway.server.server_state.connections, 5, "the server to see the close")


async def _messages_json(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    body = {"model": "normal", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    r = await client.post("/v1/messages", json=body)
    assert r.status_code == 200 and r.json()["type"] == "message"


async def _responses_provider_error(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    r = await client.post("/v1/responses", json={"model": "rate_limited", "input": "hi", "stream": True})
    assert r.status_code == 429


async def _window_opened(gateway: ServerThread, saved_garbage: list[object]) -> int:
    """A socket's requests looked at from here, after a warm one: the server's tasks when idle."""
    idle_tasks = await _task_count(gateway)
    gc.collect()
    saved_garbage.clear()
    return idle_tasks


async def _no_cycles_once_idle(gateway: ServerThread, idle_tasks: int, saved_garbage: list[object]) -> None:
    """Once the socket's request tasks have ended (bounded: 5 s), no cycle of ours was left."""
    deadline = time.monotonic() + 5
    while await _task_count(gateway) > idle_tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    gc.collect()
    assert _ours(saved_garbage) == Counter()


async def _connection_closed(gateway: ServerThread) -> None:
    """A socket's end happens when the server has seen it close: within the test that opened it,
    not in the next one's window (whose server is another, but the collector is the process's)."""
    await _connections_gone(gateway)
    await _requests_done(gateway)


async def _own_connection(client: httpx.AsyncClient, gateway: ServerThread) -> None:
    async with httpx.AsyncClient(base_url=client.base_url, timeout=10) as own:
        await _sse(own, gateway)
    await _connections_gone(gateway)


@pytest.mark.parametrize(
    "request_once",
    [
        _sse,
        _json,
        _left_mid_stream,
        _provider_error,
        _bad_body,
        _own_connection,
        _responses_sse,
        _responses_json,
        _messages_sse,
        _messages_json,
        _responses_provider_error,
    ],
    ids=[
        "sse",
        "json",
        "client-left-mid-stream",
        "provider-error",
        "bad-body",
        "connection-per-request",
        "responses-sse",
        "responses-json",
        "messages-sse",
        "messages-json",
        "responses-provider-error",
    ],
)
async def test_finished_requests_leave_no_cycles_of_ours(
    gateway: ServerThread,
    fake: FakeProvider,
    saved_garbage: list[object],
    request_once: Callable[[httpx.AsyncClient, ServerThread], Awaitable[None]],
) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client:
        for _ in range(5):
            await request_once(client, gateway)
            await _requests_done(gateway)
    gc.collect()
    assert _ours(saved_garbage) == Counter()


async def test_websocket_requests_leave_no_cycles_of_ours(
    gateway: ServerThread, fake: FakeProvider, saved_garbage: list[object]
) -> None:
    # Per request, on one connection (the connection's own end has a test of its own, below). An
    # earlier test's connection still closing (its session task ending) would end inside the window.
    await _connections_gone(gateway)
    await _requests_done(gateway)
    async with connect(gateway.ws_url, subprotocols=["chat.v1"], open_timeout=5) as ws:  # type: ignore[list-item]
        await ws.send(create("warm"))
        await until_end(ws, "warm")
        idle_tasks = await _window_opened(gateway, saved_garbage)
        for i in range(5):
            await ws.send(create(f"q{i}"))
            frames = await until_end(ws, f"q{i}")
            assert frames[-1]["type"] == "chat.completion.done"
        await _no_cycles_once_idle(gateway, idle_tasks, saved_garbage)
    await _connection_closed(gateway)


def test_a_resume_log_holds_chunk_events_the_collector_does_not_track() -> None:
    # A resume log keeps a stream's events for resume_ttl_s: at a few hundred streams a second that is
    # hundreds of thousands of events, which every collection reaching them would walk. Chunk events
    # are not tracked; an error event is (a cycle through its traceback must still be found).
    from app.domain.chunks import Chunk, Usage
    from app.domain.errors import UpstreamUnavailable
    from app.domain.events import StreamEvent
    from app.providers.chunks import read_chunk

    chunk = read_chunk(b'{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}')
    assert not gc.is_tracked(StreamEvent(1, chunk))
    assert not gc.is_tracked(StreamEvent(2, Chunk(raw=b"{}", usage=Usage(1, 2), usage_only=True)))
    assert not gc.is_tracked(StreamEvent(3, finish_reason="stop", usage=Usage(1, 2)))
    assert gc.is_tracked(StreamEvent(3, error=UpstreamUnavailable("gone")))


async def test_responses_websocket_requests_leave_no_cycles_of_ours(
    gateway: ServerThread, fake: FakeProvider, saved_garbage: list[object]
) -> None:
    # As above, on the Responses API's socket: its run's close callback (held by the stream) holds
    # the run, which holds the stream.
    await _connections_gone(gateway)
    await _requests_done(gateway)
    url = gateway.ws_url.replace("/v1/chat/completions", "/v1/responses")

    async def completed() -> None:
        await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "hi"}))
        while (event := json.loads(await ws.recv()))["type"] not in ("response.completed", "error"):
            pass
        assert event["type"] == "response.completed"

    async with connect(url, open_timeout=5) as ws:
        await completed()
        idle_tasks = await _window_opened(gateway, saved_garbage)
        for _ in range(5):
            await completed()
        await _no_cycles_once_idle(gateway, idle_tasks, saved_garbage)
    await _connection_closed(gateway)


def _server_side(garbage: list[object]) -> Counter[str]:
    """What of a connection's server side is in ``garbage`` (the test's client runs on asyncio's
    own loop, so uvloop's transports are the server's; a client whose connection broke leaves a
    cycle of its own, in ``websockets.client``)."""
    server = ("app.", "litestar.", "uvicorn.", "uvloop.", "websockets.server.")
    return Counter(
        f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage if type(o).__module__.startswith(server)
    )


async def _chat_socket_request(ws: ClientConnection) -> None:
    await ws.send(create("once"))
    frames = await until_end(ws, "once")
    assert frames[-1]["type"] == "chat.completion.done"


async def _responses_socket_request(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "response.create", "model": "normal", "input": "hi"}))
    while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] not in ("response.completed", "error"):
        pass
    assert event["type"] == "response.completed"


async def _chat_socket_streaming(ws: ClientConnection) -> None:
    await ws.send(create("left", model="silent"))
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "chat.completion.chunk":
        assert frame["type"] != "error", frame


async def _responses_socket_streaming(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "response.create", "model": "silent", "input": "hi"}))
    while (event := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "response.output_text.delta":
        assert event["type"] != "error", event


#: Each socket's path, subprotocols, a request run to its end, and a request left mid-stream.
_SOCKETS = {
    "chat": ("/v1/chat/completions", ["chat.v1"], _chat_socket_request, _chat_socket_streaming),
    "responses": ("/v1/responses", None, _responses_socket_request, _responses_socket_streaming),
}


@pytest.mark.parametrize("ending", ["closed", "broken-mid-stream"])
@pytest.mark.parametrize("socket", list(_SOCKETS))
async def test_a_websocket_connection_leaves_no_cycle_when_it_ends(
    gateway: ServerThread, fake: FakeProvider, saved_garbage: list[object], socket: str, ending: str
) -> None:
    # Closed: Litestar's WebSocket wraps its receive and send in closures over itself; unless the
    # route releases them (socket_release.py), each connection ends as a cycle holding the socket,
    # its scope, uvicorn's protocol and transport and the websockets connection.
    # Broken mid-stream: the socket's request task is cancelled as the connection goes, and a
    # cancelled task keeps its exception, whose traceback holds the request's frame: whatever held
    # the task (the chat socket's in-flight entry, the Responses session) must have let go of it.
    path, subprotocols, request_once, streaming = _SOCKETS[socket]
    await _connection_closed(gateway)  # an earlier test's socket ends outside the window
    await _window_opened(gateway, saved_garbage)
    url = gateway.ws_url.replace("/v1/chat/completions", path)
    for _ in range(3):
        ws = await connect(url, subprotocols=subprotocols, open_timeout=5)  # type: ignore[arg-type]
        if ending == "closed":
            await request_once(ws)
            await ws.close()
        else:
            await streaming(ws)
            ws.transport.abort()  # no close frame: the connection just breaks
            await asyncio.wait_for(ws.wait_closed(), 5)
        await _connection_closed(gateway)
    gc.collect()
    assert _server_side(saved_garbage) == Counter()
