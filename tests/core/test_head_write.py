"""A response's head goes out with its body's first bytes (app/transport/head_write.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx

from app.transport.head_write import HeadHeldTransport
from tests.conftest import ServerThread
from tests.helpers.sse import chat_body


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


async def test_the_head_and_the_body_are_one_write() -> None:
    recorder = _Recorder()
    transport = HeadHeldTransport(cast(asyncio.Transport, recorder), asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"body")
    transport.write(b"more")
    await asyncio.sleep(0)  # the turn's end: nothing left to flush
    assert recorder.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"more"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else is the transport's


async def test_a_head_alone_goes_out_at_the_end_of_the_turn() -> None:
    recorder = _Recorder()
    transport = HeadHeldTransport(cast(asyncio.Transport, recorder), asyncio.get_running_loop())
    transport.write(b"head")
    assert recorder.writes == []
    await asyncio.sleep(0)
    assert recorder.writes == [b"head"]
    transport.write(b"chunk")  # a stream's first chunk, later
    assert recorder.writes == [b"head", b"chunk"]


async def test_close_writes_what_is_held_first_and_a_closed_transport_gets_nothing() -> None:
    recorder = _Recorder()
    transport = HeadHeldTransport(cast(asyncio.Transport, recorder), asyncio.get_running_loop())
    transport.write(b"head")
    transport.close()
    assert recorder.writes == [b"head"] and recorder.closed
    other = _Recorder()
    held = HeadHeldTransport(cast(asyncio.Transport, other), asyncio.get_running_loop())
    held.write(b"head")
    other.closed = True  # the client left before the turn ended
    await asyncio.sleep(0)
    assert other.writes == []


async def test_responses_on_one_kept_alive_connection_all_arrive(gateway: ServerThread) -> None:
    # JSON, SSE, HEAD and an error on one connection: each cycle's head is written once, in order.
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as client:
        for _ in range(2):
            json_answer = await client.post("/v1/chat/completions", json=chat_body("normal"))
            assert json_answer.status_code == 200 and json_answer.json()["object"] == "chat.completion"
            streamed = await client.post("/v1/chat/completions", json=chat_body("normal", stream=True))
            assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
            head = await client.head("/health/live")
            assert head.status_code in (200, 405) and head.content == b""
            refused = await client.post(
                "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
            )
            assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
