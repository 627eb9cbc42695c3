"""Clients the gateway drops are told, and counted right: a slow reader cut at ``write_timeout_s`` gets a
TCP reset (not minutes of queued bytes), its request is logged with its outcome, the closures are
logged once per period with a count that adds up; a WebSocket text frame that is not UTF-8 closes
its socket with 1007 and one throttled line, no traceback. Raw sockets against a real ``python -m app``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from loadtests.processes import GatewayProcess
from tests.conftest import EXTRA_BEHAVIOURS
from tests.helpers.fake_provider import FakeProvider

WRITE_TIMEOUT_S = 0.5
DROPS = 3


def _firehose_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # A provider of its own: firehoses that earlier tests left running on the shared one would slow
    # this module's, and the drops it counts would come late.
    fake_provider = FakeProvider().start()
    fake_provider.set_behaviour("firehose_endless", EXTRA_BEHAVIOURS["firehose_endless"])
    tmp = tmp_path_factory.mktemp("dropped")
    config = (
        f"[streaming]\nwrite_timeout_s = {WRITE_TIMEOUT_S}\ndetach_grace_s = 2\n\n"
        f'[[models.deployments]]\nname = "firehose_endless"\nlitellm_model = "openai/firehose_endless"\n'
        f'api_base = "{fake_provider.base_url}"\n'
    )
    process = GatewayProcess(tmp, config, {"CHAT_SERVER__LOG_LEVEL": "info"})
    try:
        yield process.wait_ready(90)
    finally:
        process.child.stop()
        fake_provider.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    yield from _firehose_gateway(tmp_path_factory)


@pytest.fixture
def stalled_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # Its own gateway: stalled streams left by the test below must not slow the next test's.
    yield from _firehose_gateway(tmp_path_factory)


def _stalled_reader(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    payload = b'{"model": "firehose_endless", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
    )
    return sock


def _end_of(sock: socket.socket, bound_s: float) -> str:
    """Read everything until the connection ends: "reset", "eof", or "open" after ``bound_s``."""
    deadline = time.monotonic() + bound_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(1 << 20):
                return "eof"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        pass
    return "open"


def _write_timeouts(n: int) -> Any:
    """A predicate over the log: ``n`` connections closed for their write timeout, counted."""

    def seen(events: list[dict[str, Any]]) -> bool:
        lines = [e for e in events if e.get("event") == "connection_closed" and e.get("reason") == "write_timeout"]
        return sum(e["count"] for e in lines) >= n

    return seen


def _wait_for(gateway: GatewayProcess, predicate: Any, timeout: float, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        events = gateway.log_events()
        if predicate(events):
            return events
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen within {timeout} s; log tail: {events[-10:]}")
        time.sleep(0.1)


def test_slow_readers_are_reset_logged_with_outcome_and_counted(stalled_gateway: GatewayProcess) -> None:
    # Three at once on firehoses with a detach grace: each reader's writer follows a log that grows
    # far ahead of it. Once joined the frames it was behind on into one write (quadratic: the worker
    # froze for minutes, and only the first reader was ever reset); now it writes them in pieces.
    gateway = stalled_gateway
    sockets = [_stalled_reader(gateway.port) for _ in range(DROPS)]
    try:
        # Never read until the gateway has let go of every reader (its send buffers full for
        # write_timeout_s): waited for in its log, since a stream whose provider is slower to fill the
        # buffers is let go later (a fixed sleep read one such reader too early, 1 run in 2).
        _wait_for(gateway, _write_timeouts(DROPS), 30.0, f"{DROPS} write timeouts counted")
        started = time.monotonic()
        ends = [_end_of(sock, 10.0) for sock in sockets]
        took = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    # A plain close would deliver every queued byte, then a clean FIN ("eof"): the client could not tell.
    assert ends == ["reset"] * DROPS, ends
    print(f"{DROPS} dropped readers saw their reset within {took:.2f} s of reading again")

    def counted(events: list[dict[str, Any]]) -> bool:
        logged = [e for e in events if e.get("event") == "request" and e.get("model") == "firehose_endless"]
        return _write_timeouts(DROPS)(events) and len(logged) >= DROPS

    # The first drop is logged at once, the others with their count when the 10 s period ends; each
    # request's line when its stream lets go (after the detach grace).
    events = _wait_for(gateway, counted, 30.0, f"{DROPS} write timeouts counted and their requests logged")
    lines = [e for e in events if e.get("event") == "connection_closed" and e.get("reason") == "write_timeout"]
    assert sum(e["count"] for e in lines) == DROPS, lines
    assert len(lines) <= 2, lines
    requests = [e for e in events if e.get("event") == "request" and e.get("model") == "firehose_endless"]
    assert len(requests) == DROPS, requests
    assert {r["outcome"] for r in requests} == {"client_disconnected"}, requests


def _ws_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


def _ws_open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v1\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, head
        head += data
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _close_code(sock: socket.socket) -> int | None:
    """The code of the server's close frame (reads frames until it)."""
    buf = b""
    sock.settimeout(5)
    while True:
        while len(buf) >= 2:
            length = buf[1] & 0x7F
            start = 2 + {126: 2, 127: 8}.get(length, 0)
            if length >= 126:
                length = int.from_bytes(buf[2:start], "big")
            if len(buf) < start + length:
                break
            opcode, body, buf = buf[0] & 0x0F, buf[start : start + length], buf[start + length :]
            if opcode == 0x8:
                return int.from_bytes(body[:2], "big") if len(body) >= 2 else None
        data = sock.recv(4096)
        if not data:
            return None
        buf += data


def test_invalid_utf8_websocket_frames_close_1007_with_a_throttled_line(gateway: GatewayProcess) -> None:
    frames = 5
    for _ in range(frames):
        sock = _ws_open(gateway.port)
        try:
            sock.sendall(_ws_text_frame(b'{"type": "\xff\xfe"}'))
            assert _close_code(sock) == 1007
        finally:
            sock.close()

    def counted(events: list[dict[str, Any]]) -> bool:
        lines = [e for e in events if e.get("reason") == "ws_invalid_utf8"]
        return sum(e["count"] for e in lines) >= frames

    _wait_for(gateway, counted, 20.0, f"{frames} invalid UTF-8 frames counted")
    text = gateway.child.log.read_text(errors="replace")
    assert "Traceback" not in text
    assert "Invalid UTF-8" not in text


async def test_a_websocket_request_is_logged_once_with_its_fields(gateway: GatewayProcess) -> None:
    # Each request on a socket ends with one summary line, written as the HTTP access line is.
    create = {"type": "chat.completion.create", "id": "logged-1", "request": {"model": "firehose_endless"}}
    create["request"]["messages"] = [{"role": "user", "content": "hi"}]  # type: ignore[index]
    url = f"ws://127.0.0.1:{gateway.port}/v1/chat/completions"
    async with connect(url, subprotocols=["chat.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps(create))
        async with asyncio.timeout(20):
            first = json.loads(await ws.recv())
            assert first["type"] == "chat.completion.chunk"
            await ws.send(json.dumps({"type": "chat.completion.cancel", "id": "logged-1"}))
            while (frame := json.loads(await ws.recv()))["type"] != "chat.completion.done":
                pass
    assert frame["finish_reason"] == "cancelled"
    stream_id = first["event_id"].split(":")[0]

    def logged(events: list[dict[str, Any]]) -> bool:
        return any(e.get("event") == "ws_request" and e.get("id") == "logged-1" for e in events)

    events = await asyncio.to_thread(_wait_for, gateway, logged, 20.0, "the request's ws_request line")
    lines = [e for e in events if e.get("event") == "ws_request" and e.get("id") == "logged-1"]
    assert len(lines) == 1
    line = lines[0]
    assert line["level"] == "info" and line["timestamp"].endswith("Z")
    assert line["model"] == "firehose_endless" and line["stream_id"] == stream_id
