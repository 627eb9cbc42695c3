"""Resumable streams with the memory store, against real uvicorn and the fake provider.

A replayed event must be byte-identical to what the original connection received, so these tests
compare raw SSE frames, not parsed JSON.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from app.config.settings import settings_from_dict
from tests.conftest import EXTRA_BEHAVIOURS, TEST_STREAMING, ServerThread, settings_dict
from tests.helpers.fake_provider import FakeProvider
from tests.helpers.sse import chat_body

KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
GRACE_S = 1.0
WAIT_S = 10.0


def resumable_server(fake: FakeProvider, *, fast_path: bool = True, **streaming: Any) -> ServerThread:
    environ = {"GW_KEYS": f"{KEY_A},{KEY_B}"}
    data = settings_dict(
        fake.base_url,
        fast_path=fast_path,
        streaming={**TEST_STREAMING, "detach_grace_s": GRACE_S, **streaming},
        server={"api_keys_env": "GW_KEYS"},
    )
    return ServerThread(settings_from_dict(data, environ=environ), environ=environ).start()


@pytest.fixture(scope="module", params=["fast", "full"])
def server(request: pytest.FixtureRequest, fake_provider: FakeProvider) -> Iterator[ServerThread]:
    """Resumable streams on the relay path and on the LiteLLM path."""
    s = resumable_server(fake_provider, fast_path=request.param == "fast")
    yield s
    s.stop()


@pytest.fixture
async def http(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S) as c:
        yield c


def frames(raw: bytes) -> list[bytes]:
    """Whole SSE events (each with its blank line), heartbeat comments left out."""
    # A heartbeat is a lone comment line, so it sits in front of the event that follows it.
    parts = [b"".join(x + b"\n" for x in p.split(b"\n") if x and not x.startswith(b":")) for p in raw.split(b"\n\n")]
    return [p + b"\n" for p in parts if p]


def seq_of(frame: bytes) -> int:
    return int(frame.split(b"\n", 1)[0].rsplit(b":", 1)[1])


class Reader:
    """Reads a live SSE response event by event, and what is left of it at the end."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_raw()
        self._buffer = b""

    async def take(self, n: int) -> list[bytes]:
        while True:
            end = self._buffer.rfind(b"\n\n")
            got = frames(self._buffer[: end + 2]) if end >= 0 else []
            if len(got) >= n:
                cut = 0
                for _ in range(n):  # keep what follows the n-th event (heartbeats skipped)
                    while self._buffer[cut:].startswith(b":"):  # a heartbeat: one comment line
                        cut = self._buffer.index(b"\n", cut) + 1
                    cut = self._buffer.index(b"\n\n", cut) + 2
                self._buffer = self._buffer[cut:]
                return got[:n]
            self._buffer += await anext(self._chunks)

    async def rest(self) -> list[bytes]:
        async for data in self._chunks:
            self._buffer += data
        return frames(self._buffer)


async def read_some(response: httpx.Response, n: int) -> list[bytes]:
    """The first ``n`` events of a live SSE response (the caller then leaves)."""
    return await Reader(response).take(n)


async def resume(http: httpx.AsyncClient, sid: str, last: str | None, headers: dict[str, str] = A) -> httpx.Response:
    h = dict(headers)
    if last is not None:
        h["Last-Event-ID"] = last
    return await http.get(f"/v1/chat/completions/streams/{sid}", headers=h)


async def test_resume_after_disconnect_gives_exactly_the_missing_events(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    body = chat_body("slow_gap", stream=True)
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=A) as response:
        assert response.status_code == 200
        sid = response.headers["x-stream-id"]
        first = await read_some(response, 2)
    # The client is gone; within the grace the upstream call goes on.
    resumed = await resume(http, sid, f"{sid}:{seq_of(first[-1])}")
    assert resumed.status_code == 200
    assert resumed.headers["content-type"].startswith("text/event-stream")
    assert resumed.headers["x-stream-id"] == sid
    rest = frames(resumed.content)
    assert [seq_of(f) for f in first + rest] == list(range(1, len(first + rest) + 1))
    assert rest[-1].endswith(b"data: [DONE]\n\n")
    # The whole log, read after the end, is what an uninterrupted connection received: same bytes.
    whole = await resume(http, sid, None)
    assert frames(whole.content) == first + rest
    text = "".join(
        json.loads(f.split(b"data: ", 1)[1])["choices"][0]["delta"].get("content") or ""
        for f in first + rest
        if b"[DONE]" not in f and json.loads(f.split(b"data: ", 1)[1])["choices"]
    )
    assert text == "Hello, world! This is the fake provider."
    assert fake.calls("slow_gap") == 1
    record = fake.requests[0]
    assert record.completed_at is not None and record.disconnected_at is None


async def test_resume_replays_byte_identical_to_the_live_connection(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    body = chat_body("paced", stream=True, stream_options={"include_usage": True})
    response = await http.post("/v1/chat/completions", json=body, headers=A)
    sid = response.headers["x-stream-id"]
    live = frames(response.content)
    for k in (0, 1, len(live) // 2, len(live) - 2):
        resumed = await resume(http, sid, f"{sid}:{k}")
        assert frames(resumed.content) == live[k:], k
    # The query parameter does the same for clients that cannot set headers.
    by_query = await http.get(f"/v1/chat/completions/streams/{sid}?last_event_id={sid}:3", headers=A)
    assert frames(by_query.content) == live[3:]
    # At the very end there is nothing to send: 204, which also stops a browser's EventSource.
    at_end = await resume(http, sid, f"{sid}:{len(live)}")
    assert at_end.status_code == 204


async def test_resume_follows_a_live_stream_while_the_original_reads(
    http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    async with http.stream("POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True), headers=A) as r:
        sid = r.headers["x-stream-id"]
        reader = Reader(r)
        first = await reader.take(1)
        follower = asyncio.create_task(resume(http, sid, f"{sid}:0"))
        original = first + await reader.rest()
    followed = await asyncio.wait_for(follower, WAIT_S)
    assert frames(followed.content) == original
    assert fake.calls("slow_gap") == 1


async def test_another_key_unknown_and_bad_positions(
    http: httpx.AsyncClient, fake: FakeProvider, server: ServerThread
) -> None:
    response = await http.post("/v1/chat/completions", json=chat_body("normal", stream=True), headers=A)
    sid = response.headers["x-stream-id"]
    n = len(frames(response.content))
    before = dict(server.app.state.metrics.resumes)

    theirs = await resume(http, sid, None, headers=B)
    assert theirs.status_code == 404
    assert theirs.json()["error"]["code"] == "stream_not_found"
    assert theirs.json()["error"]["type"] == "invalid_request_error"
    unknown = await resume(http, "0" * 32, None)
    assert unknown.status_code == 404
    assert (await http.delete(f"/v1/chat/completions/streams/{sid}", headers=B)).status_code == 404

    past = await resume(http, sid, f"{sid}:{n + 3}")
    assert past.status_code == 409
    assert past.json()["error"]["code"] == "invalid_resume_position"
    wrong_stream = await resume(http, sid, f"{'1' * 32}:1")
    assert wrong_stream.status_code == 409
    no_key = await http.get(f"/v1/chat/completions/streams/{sid}")
    assert no_key.status_code == 401
    # An unknown stream, or another key's, is a 404 whatever its Last-Event-ID says (API.md 4).
    unknown_elsewhere = await resume(http, "2" * 32, f"{sid}:1")
    assert unknown_elsewhere.status_code == 404
    assert unknown_elsewhere.json()["error"]["code"] == "stream_not_found"
    assert (await resume(http, sid, f"{'1' * 32}:1", headers=B)).status_code == 404
    assert (await resume(http, sid, "garbage", headers=B)).status_code == 404

    after = server.app.state.metrics.resumes
    assert after[("not_found",)] - before[("not_found",)] == 5
    assert after[("invalid",)] - before[("invalid",)] == 2
    metrics = (await http.get("/metrics")).text
    assert 'chat_resumes_total{result="replayed"}' in metrics
    assert "chat_resume_memory_bytes" in metrics


async def test_a_position_of_digits_that_are_not_ascii_is_a_409(http: httpx.AsyncClient, server: ServerThread) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` fails: every such position is the contract's 409."""
    response = await http.post("/v1/chat/completions", json=chat_body("normal", stream=True), headers=A)
    sid = response.headers["x-stream-id"]
    by_header = await http.get(
        f"/v1/chat/completions/streams/{sid}", headers={**A, "Last-Event-ID": f"{sid}:\xb2".encode("latin-1")}
    )
    assert by_header.status_code == 409, by_header.text
    by_query = await http.get(f"/v1/chat/completions/streams/{sid}", params={"last_event_id": f"{sid}:١٢"}, headers=A)
    assert by_query.status_code == 409, by_query.text
    assert by_query.json()["error"]["code"] == "invalid_resume_position"
    async with _ws(server) as ws:
        frame = {"type": "chat.completion.resume", "id": "u", "stream_id": sid, "last_event_id": f"{sid}:²"}
        await ws.send(json.dumps(frame))
        error = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    assert (error["type"], error["id"], error["status"]) == ("error", "u", 409)


async def test_a_websocket_resume_at_the_last_event_ends_with_it(http: httpx.AsyncClient, server: ServerThread) -> None:
    """Nothing follows the stream's last event: an SSE resume answers 204, a socket's request its one
    last frame, the stream's own end again (it never waits for an event that cannot come)."""
    response = await http.post("/v1/chat/completions", json=chat_body("normal", stream=True), headers=A)
    sid = response.headers["x-stream-id"]
    last = seq_of(frames(response.content)[-1])
    assert (await resume(http, sid, f"{sid}:{last}")).status_code == 204
    async with _ws(server) as ws:
        frame = {"type": "chat.completion.resume", "id": "e", "stream_id": sid, "last_event_id": f"{sid}:{last}"}
        await ws.send(json.dumps(frame))
        end = await _frames_until_end(ws, "e")
    assert end == [{"type": "chat.completion.done", "id": "e", "finish_reason": "stop", "usage": end[0]["usage"]}]


async def test_a_messages_stream_is_not_resumed_as_chat_chunks(http: httpx.AsyncClient, server: ServerThread) -> None:
    """A stream replays in the API's shape it was made in: a Messages stream over SSE (Anthropic's
    events), and over the chat socket not at all (its frames carry chat chunks)."""
    body = {"model": "normal", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    response = await http.post("/v1/messages", json=body, headers=A)
    sid = response.headers["x-stream-id"]
    replayed = await resume(http, sid, None)
    assert replayed.status_code == 200 and replayed.text == response.text
    async with _ws(server) as ws:
        await ws.send(json.dumps({"type": "chat.completion.resume", "id": "m", "stream_id": sid}))
        error = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    assert (error["type"], error["id"], error["status"]) == ("error", "m", 400)
    assert error["error"]["param"] == "stream_id"


async def test_past_the_end_of_a_live_stream_waits_for_it(http: httpx.AsyncClient, fake: FakeProvider) -> None:
    async with http.stream("POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True), headers=A) as r:
        sid = r.headers["x-stream-id"]
        await read_some(r, 1)
        # Event 3 is ~0.6 s away: the resume waits for it (up to 1 s) instead of answering 409.
        ahead = await resume(http, sid, f"{sid}:3")
        assert ahead.status_code == 200
        assert seq_of(frames(ahead.content)[0]) == 4


async def test_delete_stops_the_provider_and_tells_the_reader(http: httpx.AsyncClient, fake: FakeProvider) -> None:
    async with http.stream("POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True), headers=A) as r:
        sid = r.headers["x-stream-id"]
        reader = Reader(r)
        await reader.take(1)
        record = fake.requests[0]
        gone = await http.delete(f"/v1/chat/completions/streams/{sid}", headers=A)
        assert gone.status_code == 204
        rest = await reader.rest()
    await fake.await_disconnect(record, timeout=3)
    assert record.completed_at is None
    assert b"event: error\n" in rest[-1]
    error = json.loads(rest[-1].split(b"data: ", 1)[1])["error"]
    assert error["code"] == "stream_cancelled" and error["type"] == "invalid_request_error"
    # Stopping a stream that has ended is also a 204; a resume replays its end.
    assert (await http.delete(f"/v1/chat/completions/streams/{sid}", headers=A)).status_code == 204
    replay = await resume(http, sid, None)
    assert b"stream_cancelled" in frames(replay.content)[-1]


async def test_delete_stops_the_provider_while_a_slow_client_is_being_written_to(
    server: ServerThread, http: httpx.AsyncClient, fake: FakeProvider
) -> None:
    """The client reads nothing, so the gateway waits on its socket, not on the provider: a DELETE
    still ends the provider's call at once (it went on until the client's write timed out)."""
    # 12 MB without two chunks alike (LiteLLM ends streams that repeat one), paced to last 6 s.
    fake.set_behaviour("firehose_varied", replace(EXTRA_BEHAVIOURS["firehose_varied"], gap_s=0.002))
    body = json.dumps(chat_body("firehose_varied", stream=True)).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, int(port))), WAIT_S)
    # A small read limit: the reader stops reading once it holds a few KB, as a stalled client does.
    reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
    try:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: {A['Authorization']}\r\n"
        writer.write(f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        received = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)).lower()
        assert b"x-stream-id: " in received, received
        sid = received.split(b"x-stream-id: ", 1)[1][:32].decode()
        record = fake.requests[-1]
        await asyncio.sleep(0.5)  # the buffers between the gateway and this client fill up
        assert record.completed_at is None
        gone = await http.delete(f"/v1/chat/completions/streams/{sid}", headers=A)
        assert gone.status_code == 204
        await fake.await_disconnect(record, timeout=3)
    finally:
        writer.close()
        fake.set_behaviour("firehose_varied", EXTRA_BEHAVIOURS["firehose_varied"])


async def test_nobody_resumes_within_the_grace_the_upstream_stops(
    http: httpx.AsyncClient, fake: FakeProvider, server: ServerThread
) -> None:
    long = chat_body("slow_gap", stream=True)
    fake_record_count = len(fake.requests)
    async with http.stream("POST", "/v1/chat/completions", json=long, headers=A) as r:
        await read_some(r, 1)
    left_at = time.monotonic()
    record = fake.requests[fake_record_count]
    closed_at = await fake.await_disconnect(record, timeout=GRACE_S + 3)
    assert record.completed_at is None
    # Kept for the grace (a resume could still come), stopped once it is over: slow_gap has ~2.7 s
    # of stream left, so a call that outlived the grace by much would have completed instead.
    assert GRACE_S - 0.05 <= closed_at - left_at < GRACE_S + 0.5, closed_at - left_at


async def test_grace_zero_cancels_at_once(gateway: ServerThread, fake: FakeProvider) -> None:
    """The session gateway has no grace: leaving cancels the upstream call, and the log says so."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=WAIT_S) as c:
        async with c.stream("POST", "/v1/chat/completions", json=chat_body("slow_gap", stream=True)) as r:
            sid = r.headers["x-stream-id"]
            first = await read_some(r, 1)
            record = fake.requests[0]
        await fake.await_disconnect(record, timeout=1)
        assert record.completed_at is None
        replay = await c.get(f"/v1/chat/completions/streams/{sid}")
        got = frames(replay.content)
        assert got[0] == first[0]
        assert b"stream_cancelled" in got[-1]


# -- WebSocket -------------------------------------------------------------------------------------


async def _frames_until_end(ws: ClientConnection, frame_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        if frame.get("id") != frame_id:
            continue
        out.append(frame)
        if frame["type"] != "chat.completion.chunk":
            return out


def _ws(server: ServerThread) -> Any:
    return connect(server.ws_url, additional_headers=A, open_timeout=WAIT_S)


async def test_websocket_chunks_carry_event_ids_and_a_dropped_socket_resumes(
    server: ServerThread, fake: FakeProvider
) -> None:
    async with _ws(server) as ws:
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "r1", "request": chat_body("slow_gap")}))
        first = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    assert first["type"] == "chat.completion.chunk"
    sid, seq = first["event_id"].rsplit(":", 1)
    assert seq == "1"
    async with _ws(server) as ws:
        resume_frame = {"type": "chat.completion.resume", "id": "r2", "stream_id": sid, "last_event_id": f"{sid}:1"}
        await ws.send(json.dumps(resume_frame))
        rest = await _frames_until_end(ws, "r2")
    assert [f["event_id"] for f in rest[:-1]] == [f"{sid}:{i}" for i in range(2, len(rest) + 1)]
    assert rest[-1]["type"] == "chat.completion.done" and rest[-1]["finish_reason"] == "stop"
    chunks = [first["chunk"]] + [f["chunk"] for f in rest[:-1]]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text == "Hello, world! This is the fake provider."
    assert fake.calls("slow_gap") == 1


async def test_websocket_resume_errors_and_cancel(server: ServerThread, fake: FakeProvider) -> None:
    async with _ws(server) as ws:
        await ws.send(json.dumps({"type": "chat.completion.resume", "id": "x", "stream_id": "f" * 32}))
        error = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert error["type"] == "error" and error["status"] == 404
        assert error["error"]["code"] == "stream_not_found"

        await ws.send(json.dumps({"type": "chat.completion.create", "id": "c1", "request": chat_body("slow_gap")}))
        first = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        sid = first["event_id"].rsplit(":", 1)[0]
        record = fake.requests[0]
        async with _ws(server) as other:
            await other.send(json.dumps({"type": "chat.completion.resume", "id": "c2", "stream_id": sid}))
            replayed = json.loads(await asyncio.wait_for(other.recv(), WAIT_S))
            assert replayed["event_id"] == first["event_id"] and replayed["chunk"] == first["chunk"]
            # A cancel of the resumed request stops the stream: the original request gets an error
            # frame with status 409 (stream_cancelled), the resumed one its done frame "cancelled".
            await other.send(json.dumps({"type": "chat.completion.cancel", "id": "c2"}))
            mine = await _frames_until_end(other, "c2")
            assert mine[-1] == {"type": "chat.completion.done", "id": "c2", "finish_reason": "cancelled", "usage": None}
        theirs = await _frames_until_end(ws, "c1")
        assert theirs[-1]["type"] == "error" and theirs[-1]["status"] == 409
        assert theirs[-1]["error"]["code"] == "stream_cancelled"
    await fake.await_disconnect(record, timeout=3)


async def test_websocket_cancel_stops_a_detachable_stream_at_once(server: ServerThread, fake: FakeProvider) -> None:
    """With a grace, a cancel is still a cancel: the upstream stops now, not after the grace."""
    async with _ws(server) as ws:
        await ws.send(json.dumps({"type": "chat.completion.create", "id": "k1", "request": chat_body("slow_gap")}))
        first = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
        assert first["type"] == "chat.completion.chunk"
        record = fake.requests[0]
        await ws.send(json.dumps({"type": "chat.completion.cancel", "id": "k1"}))
        frames_ = await _frames_until_end(ws, "k1")
        assert frames_[-1]["type"] == "chat.completion.done" and frames_[-1]["finish_reason"] == "cancelled"
        left_at = asyncio.get_running_loop().time()
    await fake.await_disconnect(record, timeout=GRACE_S / 2)
    assert asyncio.get_running_loop().time() - left_at < GRACE_S / 2
    assert record.completed_at is None


async def test_a_resumed_reader_counts_against_the_keys_concurrent_streams(fake: FakeProvider) -> None:
    # Two stream slots for every key: the stream itself holds one, a resumed reader the other, and a
    # second reader is one too many (429), as a third stream would be.
    environ = {"GW_KEYS": f"{KEY_A},{KEY_B}"}
    data = settings_dict(
        fake.base_url,
        streaming={**TEST_STREAMING, "detach_grace_s": GRACE_S},
        server={"api_keys_env": "GW_KEYS"},
        rate_limit={"concurrent_streams": 2},
    )
    limited = ServerThread(settings_from_dict(data, environ=environ), environ=environ).start()
    try:
        async with httpx.AsyncClient(base_url=limited.base_url, timeout=WAIT_S) as client:
            body = chat_body("slow_gap", stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=A) as original:
                sid = original.headers["x-stream-id"]
                await Reader(original).take(1)
                headers = {**A, "Last-Event-ID": f"{sid}:0"}
                path = f"/v1/chat/completions/streams/{sid}"
                async with client.stream("GET", path, headers=headers) as first_reader:
                    assert first_reader.status_code == 200
                    second = await client.get(path, headers=headers)
                    assert second.status_code == 429, second.text
                    assert second.json()["error"]["code"] == "rate_limit_exceeded"
                    assert second.headers["retry-after"].isdigit()
            # Both readers gone and the stream ended: the slots are free again.
            deadline = asyncio.get_running_loop().time() + WAIT_S
            while (await client.get(path, headers=headers)).status_code == 429:
                assert asyncio.get_running_loop().time() < deadline, "the readers' slots were never released"
                await asyncio.sleep(0.05)
    finally:
        limited.stop()
