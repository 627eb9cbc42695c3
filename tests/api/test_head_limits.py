"""A request's head is bounded while it is parsed, and the parser's refusals are the contract's errors.

Raw sockets against real uvicorn running the guarded protocol (app/transport/guarded.py,
app/transport/head_limits.py); the memory test runs a real ``python -m app`` and reads its peak RSS.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.transport.head_limits import MAX_HEADER_BYTES, MAX_HEADER_LINES, MAX_REQUEST_LINE_BYTES
from loadtests.processes import GatewayProcess
from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider


@pytest.fixture(scope="module")
def server(fake_provider: FakeProvider) -> Iterator[ServerThread]:
    gateway = ServerThread(make_settings(fake_provider.base_url)).start()
    yield gateway
    gateway.stop()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` (from a thread, so a server that answers early is read meanwhile); return
    everything the server sent until it closed (a reset after its answer keeps what was read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:

        def send() -> None:
            try:
                sock.sendall(data)
            except OSError:
                pass  # the server closed while we were still sending: allowed for an oversized head

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass
        sender.join(timeout)
        return received


def parse(reply: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, json.loads(body) if body else {}


def assert_contract_error(reply: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = parse(reply)
    assert got == status, reply[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert headers.get("x-request-id")
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    return headers


def get(path: str = "/health/live", extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    host = b"Host: test\r\n" if version == b"HTTP/1.1" else b""
    return b"GET " + path.encode() + b" " + version + b"\r\n" + host + extra + b"Connection: close\r\n\r\n"


def test_an_ordinary_request_is_served(server: ServerThread) -> None:
    status, _, body = parse(exchange(server.port, get()))
    assert (status, body) == (200, {"status": "ok"})


def test_a_request_line_over_8_kib_is_414(server: ServerThread) -> None:
    reply = exchange(server.port, get("/health/live?" + "a" * MAX_REQUEST_LINE_BYTES))
    assert_contract_error(reply, 414, "uri_too_long")


def test_a_request_line_just_under_the_limit_is_served(server: ServerThread) -> None:
    path = "/health/live?q="
    status, _, _ = parse(exchange(server.port, get(path + "a" * (MAX_REQUEST_LINE_BYTES - len(path) - 16))))
    assert status == 200


def test_more_than_100_header_lines_is_431(server: ServerThread) -> None:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADER_LINES))  # plus Host and Connection
    assert_contract_error(exchange(server.port, get(extra=lines)), 431, "headers_too_large")


def test_headers_over_64_kib_in_all_are_431(server: ServerThread) -> None:
    # Ten lines of 7 KiB: no single line is large, the sum is.
    lines = b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 7000) for i in range(10))
    assert_contract_error(exchange(server.port, get(extra=lines)), 431, "headers_too_large")


def test_headers_just_under_the_limits_are_served(server: ServerThread) -> None:
    lines = b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 600) for i in range(90))  # 90 lines, ~55 KiB
    assert len(lines) < MAX_HEADER_BYTES
    status, _, _ = parse(exchange(server.port, get(extra=lines)))
    assert status == 200


def test_one_huge_header_line_is_431_and_keeps_the_clients_request_id(server: ServerThread) -> None:
    extra = b"X-Request-ID: head-limit-probe\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n"
    headers = assert_contract_error(exchange(server.port, get(extra=extra)), 431, "headers_too_large")
    assert headers["x-request-id"] == "head-limit-probe"


def test_http11_without_host_is_400(server: ServerThread) -> None:
    reply = exchange(server.port, b"GET /health/live HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert_contract_error(reply, 400, "invalid_request")


def test_http11_with_two_hosts_is_400(server: ServerThread) -> None:
    reply = exchange(server.port, get(extra=b"Host: other\r\n"))
    assert_contract_error(reply, 400, "invalid_request")


def test_http10_without_host_is_served(server: ServerThread) -> None:
    status, _, _ = parse(exchange(server.port, get(version=b"HTTP/1.0")))
    assert status == 200


def test_the_parsers_own_400_is_the_contracts_error(server: ServerThread) -> None:
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", b"\x16\x03\x01\x02\x00"):
        assert_contract_error(exchange(server.port, garbage), 400, "invalid_request")


def test_a_pipelined_oversized_head_behind_a_served_request(server: ServerThread) -> None:
    first = b"GET /health/live HTTP/1.1\r\nHost: test\r\n\r\n"
    second = b"GET /health/live HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n"
    reply = exchange(server.port, first + second)
    assert reply.startswith(b"HTTP/1.1 200 OK"), reply[:200]
    assert b"HTTP/1.1 431 " in reply or reply.count(b"HTTP/1.1 ") == 1  # answered, or closed


def test_the_server_serves_on_after_refusals(server: ServerThread) -> None:
    for _ in range(3):
        exchange(server.port, get(extra=b"X-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n"))
    status, _, _ = parse(exchange(server.port, get()))
    assert status == 200


# -- memory: a real process ------------------------------------------------------------------------

CONFIG = '[[models.deployments]]\nname = "demo"\nlitellm_model = "demo/demo"\n'


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_forty_1mb_header_lines_cost_no_memory(tmp_path: Path) -> None:
    """The finding: 40 x 1 MB header lines on /health/live were a 200 and +45 MB of peak RSS."""
    gateway = GatewayProcess(tmp_path, CONFIG)
    try:
        gateway.wait_ready(timeout=90)
        before = peak_rss_bytes(gateway.pid)
        line = b"X-Pad: " + b"a" * (1 << 20) + b"\r\n"
        attack = b"GET /health/live HTTP/1.1\r\nHost: test\r\n" + line * 40 + b"\r\n"
        reply = exchange(gateway.port, attack, timeout=20)
        if reply:  # the server may close while the client is still sending instead (API.md allows it)
            assert_contract_error(reply, 431, "headers_too_large")
        grown = peak_rss_bytes(gateway.pid) - before
        assert grown < 8 * 2**20, f"peak RSS grew by {grown / 2**20:.1f} MB"
        status, _, body = parse(exchange(gateway.port, get()))
        assert (status, body) == (200, {"status": "ok"})
    finally:
        gateway.stop()
