"""Drain answers every connection (API.md 1.4): raw sockets against a real `python -m app` and SIGTERM.

After the listener closes, a request on a kept-alive connection gets 503 ``server_shutting_down``
with ``Connection: close`` (not EOF), and a request pipelined behind a running stream gets its 503
once the stream has ended.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.test_drain import SHORT, drain_gateway
from tests.helpers.fake_provider import FakeProvider

DELAY_S = 0.5


@pytest.fixture
def short_fake(fake: FakeProvider) -> Iterator[FakeProvider]:
    fake.set_behaviour("drain_short", SHORT)  # ~2 s of chunks
    for name in ("drain_long", "drain_long_full", "hold_short", "hold_long", "hold_long_full"):
        fake.set_behaviour(name, SHORT)
    yield fake


def _post(model: str, stream: bool) -> bytes:
    body = b'{"model": "%b", "messages": [{"role": "user", "content": "hi"}], "stream": %b}' % (
        model.encode(),
        b"true" if stream else b"false",
    )
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )


def _post_messages() -> bytes:
    body = b'{"model": "drain_short", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    return (
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )


GET_LIVE = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


def _read_to_eof(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything until the server closes; whether it did within ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            part = sock.recv(65536)
            if not part:
                return data, True
            data += part
    except TimeoutError:
        pass
    except ConnectionResetError:
        return data, True
    return data, False


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def test_drain_answers_kept_alive_and_pipelined_requests(tmp_path: Path, short_fake: FakeProvider) -> None:
    gateway = drain_gateway(tmp_path, short_fake, drain_s=10, delay_s=DELAY_S)
    opened: list[socket.socket] = []
    try:
        gateway.wait_ready(90)
        idle = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
        idle.sendall(GET_LIVE)
        first = _read_until(idle, b"}", 5)  # the whole answer: the connection is idle and kept alive now
        assert first.startswith(b"HTTP/1.1 200"), first
        assert b"connection: close" not in first.lower()
        anthropic = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)  # another, for /v1/messages
        opened.append(anthropic)
        anthropic.sendall(GET_LIVE)
        assert _read_until(anthropic, b"}", 5).startswith(b"HTTP/1.1 200")

        piped = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
        piped.sendall(_post("drain_short", stream=True) + _post("drain_short", stream=False))
        head = _read_until(piped, b"data: ", 10)
        assert head.startswith(b"HTTP/1.1 200"), head

        gateway.child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DELAY_S + 5
        while not _refused(gateway.port):
            assert time.monotonic() < deadline, "the listener did not close"
            time.sleep(0.05)

        # The idle kept-alive connection: its next request is answered, 503 and a close, then EOF.
        idle.sendall(_post("drain_short", stream=False))
        answer, closed = _read_to_eof(idle, 5)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"server_shutting_down" in answer and b"connection: close" in answer.lower(), answer
        assert closed
        # The Messages API's clients get Anthropic's shape: 529 overloaded_error, which they retry.
        anthropic.sendall(_post_messages())
        answer, closed = _read_to_eof(anthropic, 5)
        assert answer.startswith(b"HTTP/1.1 529"), answer
        head_part, _, body = answer.partition(b"\r\n\r\n")
        assert json.loads(body) == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": json.loads(body)["error"]["message"]},
        }
        assert b"request-id: " in head_part.lower() and closed
        anthropic.close()

        # The pipelined request: the stream runs to its end, then the 503, then EOF.
        rest, closed = _read_to_eof(piped, 15)
        stream_part, _, second = (head + rest).partition(b"HTTP/1.1 503")
        assert b"data: [DONE]" in stream_part, stream_part[-300:]
        assert b"server_shutting_down" in second and b"connection: close" in second.lower(), second
        assert closed
        idle.close()
        piped.close()
        assert gateway.child.proc.wait(15) == 0, gateway.child.log.read_text()[-2000:]
    finally:
        for sock in opened:
            sock.close()
        gateway.stop()
