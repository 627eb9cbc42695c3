"""Egress through a proxy (app/providers/egress.py): a tiny CONNECT proxy and TLS server on loopback."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trustme

from app.providers.egress import EgressSettings, ProxyError, open_tunnel, parse_proxy
from tests.conftest import ServerThread, make_settings
from tests.helpers.fake_provider import FakeProvider

WAIT_S = 5.0


class ConnectProxy:
    """Accepts CONNECT host:port, answers 200 and pipes bytes both ways; records what it saw."""

    def __init__(self, *, refuse: bool = False) -> None:
        self.refuse = refuse
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
            self.requests.append(head)
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if method != b"CONNECT" or self.refuse:
                writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return
            host, _, port = target.rpartition(b":")
            up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP/1.1 request, one fixed reply."""
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
        await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = await ConnectProxy().start()
    yield p
    await p.stop()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def _get_through(sock: object, ssl_context: ssl.SSLContext | None, host: str) -> bytes:
    reader, writer = await asyncio.open_connection(
        sock=sock,
        ssl=ssl_context,
        server_hostname=host if ssl_context else None,  # type: ignore[arg-type]
    )
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), WAIT_S)
    writer.close()
    return reply


async def test_plain_http_through_the_tunnel(proxy: ConnectProxy) -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = EgressSettings.from_environ({"HTTP_PROXY": f"http://127.0.0.1:{proxy.port}"})
        found = settings.proxy_for("http", "provider.example", port)
        assert found is not None
        sock = await asyncio.wait_for(open_tunnel(found, "127.0.0.1", port), WAIT_S)
        reply = await _get_through(sock, None, "127.0.0.1")
        assert reply.endswith(b"hello")
        assert proxy.requests[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n".encode())
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_end_to_end_with_ssl_cert_file(proxy: ConnectProxy, ca: trustme.CA, tmp_path: Path) -> None:
    """TLS runs inside the tunnel, verified against the CA that SSL_CERT_FILE names."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    server = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        settings = EgressSettings.from_environ(
            {"https_proxy": f"http://user:p%40ss@127.0.0.1:{proxy.port}", "SSL_CERT_FILE": str(ca_file)}
        )
        found = settings.proxy_for("https", "localhost", port)
        assert found is not None
        sock = await asyncio.wait_for(open_tunnel(found, "localhost", port), WAIT_S)
        reply = await _get_through(sock, settings.ssl_context(), "localhost")
        assert reply.endswith(b"hello")
        assert b"Proxy-Authorization: Basic dXNlcjpwQHNz\r\n" in proxy.requests[0]  # user:p@ss
        # Without the CA file the provider's certificate is not trusted.
        plain = EgressSettings.from_environ({"https_proxy": f"http://127.0.0.1:{proxy.port}"})
        sock = await asyncio.wait_for(open_tunnel(found, "localhost", port), WAIT_S)
        with pytest.raises(ssl.SSLCertVerificationError):
            await _get_through(sock, plain.ssl_context(), "localhost")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_refused_connect_is_a_proxy_error() -> None:
    refusing = await ConnectProxy(refuse=True).start()
    try:
        with pytest.raises(ProxyError, match="403"):
            await asyncio.wait_for(open_tunnel(parse_proxy(f"127.0.0.1:{refusing.port}"), "example.com", 443), WAIT_S)
    finally:
        await refusing.stop()


async def test_a_status_of_digits_that_are_not_ascii_is_a_proxy_error() -> None:
    """``"\xb2".isdigit()`` is true (latin-1's superscript two) and ``int`` refuses it."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 \xb2 OK\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(reply, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProxyError, match="no HTTP reply"):
            await asyncio.wait_for(open_tunnel(parse_proxy(f"127.0.0.1:{port}"), "example.com", 443), WAIT_S)
    finally:
        server.close()
        await server.wait_closed()


def test_no_proxy_rules() -> None:
    settings = EgressSettings.from_environ(
        {
            "HTTPS_PROXY": "http://proxy.corp:3128",
            "NO_PROXY": "localhost, .internal.corp,example.org,10.0.0.0/8,api.local:8443",
        }
    )
    assert settings.proxy_for("https", "api.openai.com", 443) == parse_proxy("http://proxy.corp:3128")
    assert settings.proxy_for("https", "localhost", 443) is None
    assert settings.proxy_for("https", "llm.internal.corp", 443) is None
    assert settings.proxy_for("https", "example.org", 443) is None
    assert settings.proxy_for("https", "sub.example.org", 443) is None
    assert settings.proxy_for("https", "notexample.org", 443) is not None
    assert settings.proxy_for("https", "10.1.2.3", 443) is None
    assert settings.proxy_for("https", "api.local", 8443) is None
    assert settings.proxy_for("https", "api.local", 443) is not None
    assert settings.proxy_for("http", "api.openai.com", 80) is None  # no HTTP_PROXY set
    everything = EgressSettings.from_environ({"HTTPS_PROXY": "http://p:1", "no_proxy": "*"})
    assert everything.proxy_for("https", "x", 1) is None
    # The lower-case variable wins, as in curl and httpx.
    both = EgressSettings.from_environ({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"})
    assert both.proxy_for("https", "x", 443) == parse_proxy("http://lower:1")


async def test_the_relay_reaches_its_provider_through_the_proxy(proxy: ConnectProxy, fake: FakeProvider) -> None:
    # The gateway's relay honours HTTP_PROXY like httpx and the OpenAI SDK: its provider calls go
    # through a CONNECT tunnel (the provider here is plain HTTP on loopback).
    server = ServerThread(make_settings(fake.base_url), environ={"HTTP_PROXY": f"http://127.0.0.1:{proxy.port}"})
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=WAIT_S) as client:
            body = {"model": "normal", "messages": [{"role": "user", "content": "via the proxy"}], "stream": True}
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                text = (await response.aread()).decode()
        assert response.status_code == 200 and text.rstrip().endswith("data: [DONE]")
        fake_port = fake.base_url.rsplit(":", 1)[1].split("/", 1)[0]
        assert any(f"CONNECT 127.0.0.1:{fake_port}".encode() in head for head in proxy.requests), proxy.requests
    finally:
        server.stop()
