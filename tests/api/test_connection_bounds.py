"""Connections cannot hold the server: header, body, keep-alive and write timeouts, and a connection cap.

Raw sockets against real uvicorn running the guarded protocols (app/transport/guarded.py).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from app.config.settings import settings_from_dict
from app.server.serve import connection_limits
from tests.conftest import ServerThread, make_settings, settings_dict
from tests.helpers.fake_provider import FakeProvider

SHORT = 0.5  # every timeout of the "tight" server
SLACK = 2.0  # how much later than its timeout a closure may come on a loaded 2-core machine


@pytest.fixture(scope="module")
def tight(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    settings = make_settings(
        fake_provider.base_url,
        server={"header_timeout_s": SHORT, "body_timeout_s": SHORT, "keepalive_s": SHORT},
        streaming={"write_timeout_s": SHORT},
    )
    server = ServerThread(settings).start()
    yield server
    server.stop()


def _connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (reads and discards whatever it sends first)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_connection_that_sends_nothing_is_closed(tight: ServerThread) -> None:
    with _connect(tight) as sock:
        assert _closed_within(sock, SHORT + SLACK) >= SHORT * 0.8


def _drip_until_cut(sock: socket.socket) -> None:
    """Send a request's head one byte every 0.1 s until the server closes the connection."""
    started = time.monotonic()
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    sock.settimeout(0.1)
    for byte in request:
        try:
            sock.sendall(bytes([byte]))
            if sock.recv(1) == b"":
                break
        except TimeoutError:
            continue  # nothing to read yet: keep dripping
        except (BrokenPipeError, ConnectionResetError):
            break
        if time.monotonic() - started > SHORT + SLACK:
            pytest.fail("a request whose headers drip in one byte at a time was never cut")
    assert time.monotonic() - started < SHORT + SLACK


def test_slowloris_headers_are_cut(tight: ServerThread) -> None:
    with _connect(tight) as sock:
        _drip_until_cut(sock)


def test_slowloris_headers_of_a_kept_alive_connections_next_request_are_cut(tight: ServerThread) -> None:
    # The next request's head has its own deadline, from its first byte: each byte that arrives
    # ends the keep-alive wait, so without it a drip would hold the connection for ever.
    with _connect(tight) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        _drip_until_cut(sock)


def test_body_that_stops_arriving_is_cut(tight: ServerThread, fake: FakeProvider) -> None:
    with _connect(tight) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"model": "normal"'
        )
        assert _closed_within(sock, SHORT + SLACK) >= SHORT * 0.8
    assert fake.calls() == 0


def test_idle_keep_alive_connection_is_closed(tight: ServerThread) -> None:
    with _connect(tight) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert _closed_within(sock, SHORT + SLACK) >= SHORT * 0.8


def test_a_busy_stream_is_not_cut_by_the_connection_timeouts(tight: ServerThread, fake: FakeProvider) -> None:
    # "paced" streams for longer than every SHORT timeout; reading it keeps it alive.
    with httpx.Client(base_url=tight.base_url, timeout=10) as client:
        body = {"model": "slow_gap", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = "".join(response.iter_text())
    assert text.rstrip().endswith("data: [DONE]")


def test_client_that_stops_reading_is_dropped_and_upstream_cancelled(tight: ServerThread, fake: FakeProvider) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", tight.port))
    try:
        payload = b'{"model": "firehose_endless", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
        )
        record = fake.wait_for_model("firehose_endless", timeout=5)
        # Never read: the gateway's send buffer fills, and after write_timeout_s it lets go. By then the
        # provider has sent 7-13 MB (into kernel buffers the gateway stopped reading): hence 200 MB.
        fake.wait_for_disconnect(record, timeout=SHORT + 10)
        assert record.completed_at is None
    finally:
        sock.close()


@pytest.fixture(scope="module")
def capped(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    settings = make_settings(fake_provider.base_url, server={"max_connections": 20, "header_timeout_s": 30})
    server = ServerThread(settings).start()
    yield server
    server.stop()


def test_idle_connections_are_evicted_to_serve_a_request_at_the_cap(capped: ServerThread) -> None:
    idle = [_connect(capped) for _ in range(40)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with httpx.Client(base_url=capped.base_url, timeout=5) as client:
            assert client.get("/health/live").status_code == 200
        open_ones = 0
        for sock in idle:
            sock.setblocking(False)
            try:
                open_ones += sock.recv(1) != b""
            except BlockingIOError:
                open_ones += 1
            except OSError:
                pass
        assert open_ones <= 20, f"{open_ones} idle connections held past a cap of 20"
    finally:
        for sock in idle:
            sock.close()


def test_connections_over_the_cap_get_a_503_when_every_one_is_busy(capped: ServerThread) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(20):
            stack.enter_context(ws_connect(capped.ws_url, subprotocols=["chat.v1"], open_timeout=5))  # type: ignore[list-item]
        _assert_refused(capped)
    deadline = time.monotonic() + 5
    while True:  # the sockets are gone: the server serves again
        try:
            if httpx.get(f"{capped.base_url}/health/live", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the server did not recover after the sockets left"
        time.sleep(0.05)


def _assert_refused(capped: ServerThread) -> None:
    with _connect(capped) as extra:
        extra.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        extra.settimeout(5)
        reply = extra.recv(65536)
    assert reply.startswith(b"HTTP/1.1 503"), reply
    assert b"too_many_connections" in reply
    assert b"\r\nx-request-id: " in reply  # every response carries one (API.md 4)


def test_max_connections_is_capped_by_the_descriptor_limit(fake_provider: FakeProvider) -> None:
    settings = settings_from_dict(settings_dict(fake_provider.base_url, server={"max_connections": 100_000}), {})
    assert connection_limits(settings, fd_limit=1024).max_connections == (1024 - 64) // 2
    assert connection_limits(settings, fd_limit=1_000_000).max_connections == 100_000
