"""WebSocket protocol against real uvicorn with the `websockets` client."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServerThread
from tests.helpers.fake_provider import FakeProvider

WAIT_S = 5.0


def create(frame_id: str, model: str = "normal", **extra: Any) -> str:
    request = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return json.dumps({"type": "chat.completion.create", "id": frame_id, "request": request})


def cancel(frame_id: str) -> str:
    return json.dumps({"type": "chat.completion.cancel", "id": frame_id})


async def recv(ws: ClientConnection, timeout: float = WAIT_S) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_end(ws: ClientConnection, frame_id: str, timeout: float = WAIT_S) -> list[dict[str, Any]]:
    """Frames for ``frame_id`` up to and including its done or error frame."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.01, deadline - time.monotonic()))
        if frame.get("id") != frame_id:
            continue
        frames.append(frame)
        if frame["type"] in ("chat.completion.done", "error"):
            return frames


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(
        (c.get("delta") or {}).get("content") or ""
        for f in frames
        if f["type"] == "chat.completion.chunk"
        for c in f["chunk"]["choices"]
    )


@pytest.fixture
async def ws(gateway: ServerThread) -> AsyncIterator[ClientConnection]:
    async with connect(gateway.ws_url, subprotocols=["chat.v1"], open_timeout=WAIT_S) as conn:  # type: ignore[list-item]
        yield conn


async def test_create_chunks_done(ws: ClientConnection, fake: FakeProvider) -> None:
    assert ws.subprotocol == "chat.v1"
    await ws.send(create("a", stream_options={"include_usage": True}))
    frames = await until_end(ws, "a")
    assert text_of(frames) == "Hello, world! This is the fake provider."
    done = frames[-1]
    assert done == {
        "type": "chat.completion.done",
        "id": "a",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 7, "completion_tokens": 10, "total_tokens": 17},
    }
    assert all(f["chunk"]["object"] == "chat.completion.chunk" for f in frames[:-1])


async def test_compression_offered_is_declined(ws: ClientConnection, fake: FakeProvider) -> None:
    # The client offers permessage-deflate, as browsers do; the server takes no extension (compressing
    # each token's frame costs more CPU than the bytes it saves: app/server/serve.py), so every frame
    # either way is plain (the client would refuse a compressed one now).
    assert ws.request is not None and ws.response is not None
    assert "permessage-deflate" in (ws.request.headers.get("Sec-WebSocket-Extensions") or "")
    assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
    assert ws.protocol.extensions == []
    await ws.send(create("plain"))
    frames = await until_end(ws, "plain")
    assert text_of(frames) == "Hello, world! This is the fake provider."


async def test_stream_false_still_streams(ws: ClientConnection, fake: FakeProvider) -> None:
    await ws.send(create("s", stream=False))
    frames = await until_end(ws, "s")
    # Every chunk once: ten content chunks and the finish chunk, then done.
    assert sum(f["type"] == "chat.completion.chunk" for f in frames) == 11
    assert text_of(frames) == "Hello, world! This is the fake provider."
    assert frames[-1]["type"] == "chat.completion.done"


async def test_two_concurrent_requests_interleave(ws: ClientConnection, fake: FakeProvider) -> None:
    await ws.send(create("one", "paced"))
    await ws.send(create("two", "paced"))
    order: list[str] = []
    ended: set[str] = set()
    while ended != {"one", "two"}:
        frame = await recv(ws)
        order.append(frame["id"])
        if frame["type"] == "chat.completion.done":
            ended.add(frame["id"])
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches >= 4, order


async def test_cancel_stops_upstream_and_answers_cancelled(
    ws: ClientConnection, fake: FakeProvider, gateway: ServerThread
) -> None:
    await ws.send(create("c", "slow_gap"))
    first = await recv(ws)
    assert first["type"] == "chat.completion.chunk"
    record = fake.requests[0]
    sent_at = time.monotonic()
    await ws.send(cancel("c"))
    frames = await until_end(ws, "c")
    assert frames[-1]["type"] == "chat.completion.done"
    assert frames[-1]["finish_reason"] == "cancelled"
    closed_at = await fake.await_disconnect(record, timeout=3)
    assert closed_at - sent_at < 0.1
    # The socket goes on serving.
    await ws.send(create("after"))
    assert (await until_end(ws, "after"))[-1]["finish_reason"] == "stop"


async def test_cancel_one_of_two_leaves_the_other(ws: ClientConnection, fake: FakeProvider) -> None:
    await ws.send(create("keep", "paced"))
    await ws.send(create("drop", "slow_gap"))
    await ws.send(cancel("drop"))
    seen: dict[str, dict[str, Any]] = {}
    while len(seen) < 2:
        frame = await recv(ws)
        if frame["type"] == "chat.completion.done":
            seen[frame["id"]] = frame
    assert seen["drop"]["finish_reason"] == "cancelled"
    assert seen["keep"]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("raw", "expected_id"),
    [
        ("{not json", None),
        (json.dumps([1, 2]), None),
        (json.dumps({"type": "chat.completion.explode", "id": "x1"}), "x1"),
        (json.dumps({"type": "chat.completion.create", "request": {}}), None),
        (json.dumps({"type": "chat.completion.create", "id": 5, "request": {}}), None),
    ],
)
async def test_malformed_frames_get_error_and_socket_stays_open(
    ws: ClientConnection, fake: FakeProvider, raw: str, expected_id: str | None
) -> None:
    await ws.send(raw)
    frame = await recv(ws)
    assert frame["type"] == "error"
    assert frame["id"] == expected_id
    assert frame["status"] == 400
    assert set(frame["error"]) == {"message", "type", "param", "code"}
    await ws.send(create("ok"))
    assert (await until_end(ws, "ok"))[-1]["type"] == "chat.completion.done"


async def test_invalid_request_body_is_error_frame(ws: ClientConnection, fake: FakeProvider) -> None:
    await ws.send(json.dumps({"type": "chat.completion.create", "id": "v", "request": {"model": "normal"}}))
    frame = await recv(ws)
    assert (frame["type"], frame["id"], frame["status"]) == ("error", "v", 400)
    await ws.send(create("u", "no-such-model"))
    frame = await recv(ws)
    assert (frame["type"], frame["id"], frame["status"]) == ("error", "u", 404)
    assert frame["error"]["code"] == "model_not_found"


async def test_provider_error_is_error_frame(ws: ClientConnection, fake: FakeProvider) -> None:
    await ws.send(create("e", "rate_limited"))
    frames = await until_end(ws, "e")
    assert frames[-1]["type"] == "error"
    assert frames[-1]["status"] == 429
    await ws.send(create("d", "drop"))
    frames = await until_end(ws, "d")
    assert frames[-1]["type"] == "error"
    assert frames[-1]["status"] == 502
    assert text_of(frames) == "Hello,"


async def test_duplicate_inflight_id(ws: ClientConnection, fake: FakeProvider) -> None:
    await ws.send(create("dup", "slow_gap"))
    await ws.send(create("dup", "normal"))
    while True:
        frame = await recv(ws)
        if frame["type"] == "error":
            break
    assert frame["id"] == "dup"
    assert frame["status"] == 400
    await ws.send(cancel("dup"))
    assert (await until_end(ws, "dup"))[-1]["finish_reason"] == "cancelled"


async def test_max_inflight_exceeded_is_429(ws: ClientConnection, fake: FakeProvider, gateway: ServerThread) -> None:
    limit = gateway.settings.websocket.max_inflight
    for i in range(limit):
        await ws.send(create(f"r{i}", "slow_gap"))
    await ws.send(create("over", "normal"))
    while True:
        frame = await recv(ws)
        if frame["id"] == "over":
            break
    assert frame["type"] == "error"
    assert frame["status"] == 429
    for i in range(limit):
        await ws.send(cancel(f"r{i}"))


async def test_oversize_frame_closes_1009(ws: ClientConnection, gateway: ServerThread) -> None:
    big = "x" * (gateway.settings.websocket.max_frame_bytes + 10)
    await ws.send(create("big", content=big))
    with pytest.raises(ConnectionClosed) as info:
        await recv(ws)
    assert info.value.rcvd is not None
    assert info.value.rcvd.code == 1009


async def test_socket_close_cancels_upstream(gateway: ServerThread, fake: FakeProvider) -> None:
    async with connect(gateway.ws_url) as conn:
        await conn.send(create("x", "slow_gap"))
        await recv(conn)
        record = fake.requests[0]
        closed_at_client = time.monotonic()
    closed_at = await fake.await_disconnect(record, timeout=3)
    assert closed_at - closed_at_client < 0.1


async def _task_count(gateway: ServerThread) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return gateway.call(count())


async def test_sequential_requests_leave_no_tasks(
    ws: ClientConnection, fake: FakeProvider, gateway: ServerThread
) -> None:
    await ws.send(create("warm", "fast"))
    await until_end(ws, "warm")
    before = await _task_count(gateway)
    for i in range(200):
        await ws.send(create(f"q{i}", "fast"))
        frames = await until_end(ws, f"q{i}")
        assert frames[-1]["type"] == "chat.completion.done"
    deadline = time.monotonic() + 3
    after = await _task_count(gateway)
    while after > before and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        after = await _task_count(gateway)
    assert after <= before
