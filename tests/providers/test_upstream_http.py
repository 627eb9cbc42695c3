"""The relay's HTTP/1.1 client against real sockets on 127.0.0.1: framing, keep-alive, failures, TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trustme
from yarl import URL

from app.providers.upstream import RequestTemplate, UpstreamConnectionError, UpstreamPool, UpstreamResponse

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"


class Server:
    """A scripted HTTP server: counts connections, records requests, answers with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return head + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> URL:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/v1/chat/completions")

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Server, URL]]]]:
    servers: list[Server] = []

    async def start(handler: Handler) -> tuple[Server, URL]:
        server = Server(handler)
        servers.append(server)
        return server, await server.start()

    yield start
    for server in servers:
        await server.stop()


BODY = b'{"x":1}'


def template(url: URL) -> RequestTemplate:
    return RequestTemplate(url, {"Content-Type": "application/json"})


async def test_keep_alive_reuses_one_connection_for_sequential_calls(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(OK_HEAD + b"Content-Length: 5\r\n\r\nhello")

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    for _ in range(5):
        response = await pool.post(template(url), BODY)
        assert response.status == 200
        assert await response.read() == b"hello"
        response.release()
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert server.requests[0].endswith(b'Content-Length: 7\r\n\r\n{"x":1}')
    await pool.aclose()


async def stepped_reply(
    serve: Callable[[Handler], Awaitable[tuple[Server, URL]]], rest: bytes, *later: bytes
) -> tuple[UpstreamPool, UpstreamResponse, asyncio.Event]:
    """A chunked reply whose first piece is "first" and whose ``rest`` (more chunks and the end)
    follows once the returned event is set, then each of ``later`` 50 ms apart (separate reads);
    the call is made, its response returned."""
    step = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await step.wait()
        writer.write(rest)
        for data in later:
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(data)
        await reader.read()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    return pool, await pool.post(template(url), BODY), step


async def test_chunked_body_arrives_piece_by_piece(serve) -> None:  # type: ignore[no-untyped-def]
    pool, response, step = await stepped_reply(serve, b"6\r\nsecond\r\n0\r\n\r\n")
    assert await asyncio.wait_for(response.read_some(), 5) == b"first"
    step.set()
    assert await asyncio.wait_for(response.read_some(), 5) == b"second"
    assert await asyncio.wait_for(response.read_some(), 5) == b""
    response.release()
    assert pool.idle_connections == 1
    await pool.aclose()


async def test_body_delimited_by_connection_close(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    response = await pool.post(template(url), BODY)
    assert await asyncio.wait_for(response.read(), 5) == b"until the end"
    response.release()
    assert pool.open_connections == 0  # not kept: the provider closed it
    await pool.aclose()


async def test_provider_dropping_mid_body_is_an_error(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Content-Length: 100\r\n\r\nonly part")
        await writer.drain()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    response = await pool.post(template(url), BODY)
    with pytest.raises(UpstreamConnectionError):
        await asyncio.wait_for(response.read(), 5)
    response.close()
    assert pool.open_connections == 0
    await pool.aclose()


async def test_a_call_until_its_body_returns_with_the_first_bytes_not_the_head(serve) -> None:  # type: ignore[no-untyped-def]
    """A stream's reader is woken once, by its first bytes: a 200's head alone does not return."""
    head_sent, body_due = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            head_sent.set()
            await body_due.wait()
            writer.write(b"5\r\nfirst\r\n0\r\n\r\n")
            await writer.drain()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    call = asyncio.ensure_future(pool.post(template(url), BODY, until_body=True))
    await asyncio.wait_for(head_sent.wait(), 5)
    await asyncio.sleep(0.05)  # the head has long been read
    assert not call.done()
    body_due.set()
    response = await asyncio.wait_for(call, 5)
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain"
    assert await asyncio.wait_for(response.read_some(), 5) == b"first"
    response.release()
    # Without ``until_body`` the same reply returns at its head.
    head_sent.clear()
    body_due.clear()
    response = await asyncio.wait_for(pool.post(template(url), BODY), 5)
    assert head_sent.is_set() and not body_due.is_set()
    body_due.set()
    assert await asyncio.wait_for(response.read(), 5) == b"first"
    response.release()
    await pool.aclose()


@pytest.mark.parametrize("status", [429, 500])
async def test_a_call_until_its_body_returns_an_error_reply_at_its_head(serve, status: int) -> None:  # type: ignore[no-untyped-def]
    released = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 %d Nope\r\nTransfer-Encoding: chunked\r\n\r\n" % status)
        await writer.drain()
        await released.wait()  # its body would come later: the head alone must answer

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    response = await asyncio.wait_for(pool.post(template(url), BODY, until_body=True), 5)
    assert response.status == status
    response.close()
    released.set()
    await pool.aclose()


async def test_a_call_until_its_body_that_breaks_after_its_head_fails_on_reading(serve) -> None:  # type: ignore[no-untyped-def]
    """Once the head is in, a broken connection is the body's failure: its reader gets it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Content-Length: 100\r\n\r\n")
        await writer.drain()  # and the connection closes

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    response = await asyncio.wait_for(pool.post(template(url), BODY, until_body=True), 5)
    assert response.status == 200
    with pytest.raises(UpstreamConnectionError):
        await asyncio.wait_for(response.read_some(), 5)
    response.close()
    await pool.aclose()


async def test_not_http_is_an_error(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await reader.read()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    with pytest.raises(UpstreamConnectionError, match="not valid HTTP"):
        await asyncio.wait_for(pool.post(template(url), BODY), 5)
    assert pool.open_connections == 0
    await pool.aclose()


async def test_connection_refused_is_an_error() -> None:
    # A port that was just free: nothing listens on it.
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = UpstreamPool(URL(f"http://127.0.0.1:{port}"))
    with pytest.raises(OSError):
        await asyncio.wait_for(pool.post(template(URL(f"http://127.0.0.1:{port}/x")), BODY), 5)
    assert pool.open_connections == 0
    await pool.aclose()


async def test_idle_connection_closed_by_provider_is_retried_on_a_fresh_one(serve) -> None:  # type: ignore[no-untyped-def]
    # The race a keep-alive pool must survive: the provider closes an idle connection just as the next
    # request is written on it. It closes without a byte of reply, so the request is retried once on a
    # fresh connection (the provider never handled it) instead of failing the caller.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first_connection = server.connections == 1
        answered = 0
        while await server.read_request(reader) is not None:
            if first_connection and answered == 1:
                return  # close without answering the second request
            writer.write(OK_HEAD + b"Content-Length: 2\r\n\r\nok")
            answered += 1

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    first = await pool.post(template(url), BODY)
    assert await first.read() == b"ok"
    first.release()
    assert pool.idle_connections == 1
    second = await asyncio.wait_for(pool.post(template(url), BODY), 5)
    assert await second.read() == b"ok"
    second.release()
    assert server.connections == 2
    assert len(server.requests) == 3  # the second request was written twice: once on each connection
    await pool.aclose()


async def test_a_released_stream_goes_back_when_its_last_bytes_arrive(serve) -> None:  # type: ignore[no-untyped-def]
    # The relay stops reading at [DONE]; the chunked terminator may come a moment later.
    terminator = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n4\r\nDONE\r\n")
            await terminator.wait()
            writer.write(b"0\r\n\r\n")
            terminator.clear()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    response = await pool.post(template(url), BODY)
    assert await asyncio.wait_for(response.read_some(), 5) == b"DONE"
    response.release()
    assert pool.idle_connections == 0
    terminator.set()
    for _ in range(200):
        if pool.idle_connections == 1:
            break
        await asyncio.sleep(0.01)
    assert pool.idle_connections == 1
    assert pool.open_connections == 1
    await pool.aclose()


async def test_idle_connections_are_closed_after_the_keep_alive_expiry_without_reuse(serve) -> None:  # type: ignore[no-untyped-def]
    # A burst leaves several kept-alive connections idle; nothing reuses them. The pool's sweep must
    # close them once they have been idle for keepalive_s, not leave the provider's sockets held.
    closed_by_client = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed_by_client
        while await server.read_request(reader) is not None:
            writer.write(OK_HEAD + b"Content-Length: 2\r\n\r\nok")
        closed_by_client += 1  # read_request saw EOF: the client closed the connection

    server, url = await serve(handler)
    keepalive_s = 0.4
    pool = UpstreamPool(url.origin(), keepalive_s=keepalive_s)
    burst = await asyncio.wait_for(asyncio.gather(*(pool.post(template(url), BODY) for _ in range(3))), 5)
    for response in burst:
        assert await response.read() == b"ok"
        response.release()
    idle_at = asyncio.get_running_loop().time()
    assert (server.connections, pool.idle_connections, pool.open_connections) == (3, 3, 3)
    await asyncio.sleep(keepalive_s / 2)
    assert closed_by_client == 0  # still within the keep-alive: kept
    async with asyncio.timeout(5):
        while closed_by_client < 3:
            await asyncio.sleep(0.02)
    assert asyncio.get_running_loop().time() - idle_at >= keepalive_s
    assert (pool.idle_connections, pool.open_connections) == (0, 0)
    assert pool._sweep_timer is None  # nothing idle is left: the sweep is not re-armed
    await pool.aclose()


async def test_pool_limit_makes_callers_wait_for_a_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(OK_HEAD + b"Content-Length: 2\r\n\r\nok")

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin(), limit=1)
    held = await pool.post(template(url), BODY)
    waiting = asyncio.ensure_future(pool.post(template(url), BODY))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert await held.read() == b"ok"
    held.release()
    second = await asyncio.wait_for(waiting, 5)
    assert await second.read() == b"ok"
    second.release()
    assert server.connections == 1
    await pool.aclose()


async def test_close_drops_the_connection_at_once(serve) -> None:  # type: ignore[no-untyped-def]
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
        await reader.read()  # returns when the client closes
        closed.set()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    response = await pool.post(template(url), BODY)
    assert await asyncio.wait_for(response.read_some(), 5) == b"one"
    response.close()
    await asyncio.wait_for(closed.wait(), 5)
    assert pool.open_connections == 0
    await pool.aclose()


async def test_tls_origin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.read_request(reader) is not None:
            writer.write(OK_HEAD + b"Content-Length: 6\r\n\r\nsecure")

    server = Server(handler)
    url = await server.start(server_ctx)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx)
        response = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert await response.read() == b"secure"
        response.release()
        await pool.aclose()
        # Without the CA the certificate is refused.
        untrusting = UpstreamPool(url.origin())
        with pytest.raises(ssl.SSLError):
            await asyncio.wait_for(untrusting.post(template(url), BODY), 5)
        assert untrusting.open_connections == 0
        await untrusting.aclose()
    finally:
        await server.stop()


def test_request_template_refuses_line_breaks_in_headers() -> None:
    with pytest.raises(ValueError, match="line break"):
        RequestTemplate(URL("http://h/v1"), {"Authorization": "Bearer x\r\nX-Evil: 1"})
    request = RequestTemplate(URL("https://api.example.com/v1/chat/completions?v=1"), {"Host": "spoofed", "A": "b"})
    assert request.head == b"POST /v1/chat/completions?v=1 HTTP/1.1\r\nHost: api.example.com\r\nA: b\r\n"
    assert request.h1(b"{}").endswith(b"A: b\r\nContent-Length: 2\r\n\r\n{}")
    assert request.h2(b"{}") == [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", b"api.example.com"),
        (b":path", b"/v1/chat/completions?v=1"),
        (b"a", b"b"),
        (b"content-length", b"2"),
    ]


# -- HTTP/2 -----------------------------------------------------------------------------------


class H2Log:
    def __init__(self) -> None:
        self.connections = 0
        self.closed = 0  # connections that ended
        self.bodies: dict[int, bytes] = {}
        self.resets: list[int] = []
        self.most_open = 0
        self.ended_everything = False  # every stream the server answered has ended
        self.changed = asyncio.Event()


class H2Server(asyncio.Protocol):
    """An HTTP/2 server (h2, over TLS with ALPN) answering each request with ``answer``."""

    def __init__(self, log: H2Log, answer: Callable[[H2Server, int], Awaitable[None]]) -> None:
        import h2.config
        import h2.connection

        self.log = log
        self.answer = answer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.open: set[int] = set()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.log.connections += 1
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.closed += 1
        self.log.changed.set()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.log.bodies[event.stream_id] = b""
                self.open.add(event.stream_id)
                self.log.most_open = max(self.log.most_open, len(self.open))
            elif isinstance(event, h2.events.DataReceived):
                self.log.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                asyncio.get_running_loop().create_task(self.answer(self, event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                self.open.discard(event.stream_id)
                self.log.resets.append(event.stream_id)
            self.log.changed.set()
        self.flush()

    def respond(self, stream_id: int, *parts: bytes, end: bool = True) -> None:
        if stream_id not in self.conn.streams or self.conn.streams[stream_id].closed:
            return
        stream = self.conn.streams[stream_id]
        if not stream.state_machine.headers_sent:
            self.conn.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"text/plain")])
        for part in parts:
            self.conn.send_data(stream_id, part)
        if end:
            self.conn.end_stream(stream_id)
            self.open.discard(stream_id)
            self.log.ended_everything = not self.open
            self.log.changed.set()
        self.flush()


async def _h2_origin(
    answer: Callable[[H2Server, int], Awaitable[None]],
) -> tuple[H2Log, asyncio.Server, URL, ssl.SSLContext]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["h2"])
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    log = H2Log()
    server = await asyncio.get_running_loop().create_server(
        lambda: H2Server(log, answer), "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    return log, server, URL(f"https://127.0.0.1:{port}/v1/chat/completions"), client_ctx


async def test_h2_is_used_when_the_origin_offers_it_and_carries_calls_side_by_side() -> None:
    both_in = asyncio.Event()

    async def answer(server: H2Server, stream_id: int) -> None:
        if len(server.log.bodies) >= 2:
            both_in.set()
        await asyncio.wait_for(both_in.wait(), 5)  # answer only once both calls are open at once
        server.respond(stream_id, b"part one, ", b"part two")

    log, server, url, client_ctx = await _h2_origin(answer)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx)
        first, second = await asyncio.wait_for(
            asyncio.gather(pool.post(template(url), BODY), pool.post(template(url), b'{"y":2}')), 5
        )
        assert first.stream_id and second.stream_id and first.stream_id != second.stream_id
        assert (first.status, second.status) == (200, 200)
        assert await asyncio.wait_for(first.read(), 5) == b"part one, part two"
        assert await asyncio.wait_for(second.read(), 5) == b"part one, part two"
        first.release()
        second.release()
        assert log.connections == 1
        assert log.most_open == 2
        assert sorted(log.bodies.values()) == sorted([BODY, b'{"y":2}'])
        assert log.resets == []
        await pool.aclose()
    finally:
        server.close()


async def test_h2_data_frames_of_one_read_reach_the_sink_together() -> None:
    # As on HTTP/1.1: a provider's events that arrive together (here three DATA frames in one write)
    # go to the relay in one piece, so that they reach the client in one write.
    go = asyncio.Event()

    async def answer(server: H2Server, stream_id: int) -> None:
        server.respond(stream_id, end=False)  # the headers alone first
        await asyncio.wait_for(go.wait(), 5)
        server.respond(stream_id, b"one ", b"two ", b"three")

    _log, server, url, client_ctx = await _h2_origin(answer)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx)
        response = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert response.stream_id != 0
        sink = Sink()
        response.deliver(sink)
        go.set()
        async with asyncio.timeout(5):
            await sink.until("complete")
        assert sink.calls == [("body", b"one two three"), ("complete", b"")]
        response.release()
        await pool.aclose()
    finally:
        server.close()


async def test_h2_request_larger_than_the_flow_control_window() -> None:
    async def answer(server: H2Server, stream_id: int) -> None:
        server.respond(stream_id, str(len(server.log.bodies[stream_id])).encode())

    _log, server, url, client_ctx = await _h2_origin(answer)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx)
        big = b"z" * 300_000  # the initial window is 65,535 bytes: the rest waits for WINDOW_UPDATEs
        response = await asyncio.wait_for(pool.post(template(url), big), 5)
        assert await asyncio.wait_for(response.read(), 5) == b"300000"
        response.release()
        await pool.aclose()
    finally:
        server.close()


async def test_h2_close_resets_only_that_stream() -> None:
    async def answer(server: H2Server, stream_id: int) -> None:
        if stream_id == 1:
            server.respond(stream_id, b"first chunk", end=False)  # and then nothing: a long stream
        else:
            server.respond(stream_id, b"next call")

    log, server, url, client_ctx = await _h2_origin(answer)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx)
        streaming = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert await asyncio.wait_for(streaming.read_some(), 5) == b"first chunk"
        streaming.close()  # the client left: the provider sees this stream cancelled at once
        async with asyncio.timeout(5):
            while streaming.stream_id not in log.resets:
                log.changed.clear()
                await log.changed.wait()
        following = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert await asyncio.wait_for(following.read(), 5) == b"next call"
        following.release()
        assert log.connections == 1  # the connection itself carried on
        await pool.aclose()
    finally:
        server.close()


async def test_h2_goaway_before_a_call_was_handled_sends_it_again_on_a_fresh_connection() -> None:
    # An HTTP/2 origin that is shutting a connection down (GOAWAY, last stream 1) never handled the
    # call on stream 3: it goes out again on a new connection instead of failing.
    async def answer(server: H2Server, stream_id: int) -> None:
        if server.log.connections == 1 and stream_id == 3:
            server.conn.close_connection(last_stream_id=1)
            server.flush()
            assert server.transport is not None
            server.transport.close()
        else:
            server.respond(stream_id, b"answered")

    log, server, url, client_ctx = await _h2_origin(answer)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx)
        first = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert await asyncio.wait_for(first.read(), 5) == b"answered"
        first.release()
        second = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert await asyncio.wait_for(second.read(), 5) == b"answered"
        second.release()
        assert log.connections == 2
        await pool.aclose()
    finally:
        server.close()


async def test_h2_stream_released_at_done_is_not_reset_when_it_ends_soon_after() -> None:
    end_now = asyncio.Event()

    async def answer(server: H2Server, stream_id: int) -> None:
        server.respond(stream_id, b"data: [DONE]\n\n", end=False)
        await asyncio.wait_for(end_now.wait(), 5)
        server.respond(stream_id)  # END_STREAM a moment after the reader has stopped

    log, server, url, client_ctx = await _h2_origin(answer)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx)
        response = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert await asyncio.wait_for(response.read_some(), 5) == b"data: [DONE]\n\n"
        response.release()
        end_now.set()
        async with asyncio.timeout(5):
            while not log.ended_everything:
                log.changed.clear()
                await log.changed.wait()
        assert log.resets == []
        await pool.aclose()
    finally:
        server.close()


async def test_h2_idle_connection_is_closed_after_the_keep_alive_expiry() -> None:
    async def answer(server: H2Server, stream_id: int) -> None:
        server.respond(stream_id, b"answered")

    log, server, url, client_ctx = await _h2_origin(answer)
    try:
        pool = UpstreamPool(url.origin(), ssl_context=client_ctx, keepalive_s=0.3)
        response = await asyncio.wait_for(pool.post(template(url), BODY), 5)
        assert await asyncio.wait_for(response.read(), 5) == b"answered"
        response.release()
        assert (pool.idle_connections, pool.open_connections) == (1, 1)
        async with asyncio.timeout(5):
            while log.closed < 1:
                log.changed.clear()
                await log.changed.wait()
        assert (log.connections, pool.idle_connections, pool.open_connections) == (1, 0, 0)
        await pool.aclose()
    finally:
        server.close()


class Sink:
    """A BodySink that records what it is handed and says it is full when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.full = False
        self.changed = asyncio.Event()

    def body(self, data: bytes) -> bool:
        self.calls.append(("body", data))
        self.changed.set()
        return not self.full

    def complete(self) -> None:
        self.calls.append(("complete", b""))
        self.changed.set()

    def lost(self, error: Exception) -> None:
        self.calls.append(("lost", type(error).__name__.encode()))
        self.changed.set()

    async def until(self, kind: str) -> None:
        """Until the last call is ``kind`` (the end: "complete" or "lost")."""
        while not self.calls or self.calls[-1][0] != kind:
            self.changed.clear()
            await self.changed.wait()


async def test_a_delivered_body_waits_for_a_full_sink_and_ends_after_what_it_kept(serve) -> None:  # type: ignore[no-untyped-def]
    # The push path (app/core/push.py): the body goes to a sink from the connection's callbacks.
    # A sink that says it is full gets nothing more until resume, and the body's end comes only
    # after what it was given. The pieces of one read reach the sink together, in one call (the
    # events in them then reach the client in one write).
    pool, response, step = await stepped_reply(serve, b"6\r\nsecond\r\n5\r\nthird\r\n0\r\n\r\n")
    sink = Sink()
    async with asyncio.timeout(5):
        assert await response.read_some() == b"first"  # pulled first, as a stream's first chunk is
        response.deliver(sink)
        assert sink.calls == []
        sink.full = True
        step.set()
        await sink.changed.wait()
        await asyncio.sleep(0.1)  # anything else of that read has arrived by now
    assert sink.calls == [("body", b"secondthird")], sink.calls  # full: the end is kept
    sink.full = False
    response.resume()
    assert sink.calls == [("body", b"secondthird"), ("complete", b"")]
    response.release()
    assert pool.idle_connections == 1  # a clean end: the connection goes back to the pool
    await pool.aclose()


async def test_a_full_sink_stops_the_reads_and_gets_the_rest_in_order_after_resume(serve) -> None:  # type: ignore[no-untyped-def]
    pool, response, step = await stepped_reply(serve, b"6\r\nsecond\r\n", b"5\r\nthird\r\n", b"0\r\n\r\n")
    sink = Sink()
    async with asyncio.timeout(5):
        assert await response.read_some() == b"first"
        response.deliver(sink)
        sink.full = True
        step.set()
        await sink.changed.wait()
        await asyncio.sleep(0.3)  # the later pieces have been sent by now; the connection is not read
    assert sink.calls == [("body", b"second")], sink.calls
    sink.full = False
    response.resume()
    async with asyncio.timeout(5):
        await sink.until("complete")
    assert sink.calls == [("body", b"second"), ("body", b"third"), ("complete", b"")]
    response.release()
    assert pool.idle_connections == 1
    await pool.aclose()


async def test_a_delivered_body_reports_a_broken_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await asyncio.sleep(0.1)
        writer.transport.abort()

    server, url = await serve(handler)
    pool = UpstreamPool(url.origin())
    response = await pool.post(template(url), BODY)
    sink = Sink()
    response.deliver(sink)
    async with asyncio.timeout(5):
        await sink.until("lost")
    assert sink.calls[0] == ("body", b"first")
    assert sink.calls[-1][0] == "lost"
    response.close()
    await pool.aclose()


async def test_a_body_delivered_to_a_sink_that_is_already_full_waits_for_resume(serve) -> None:  # type: ignore[no-untyped-def]
    pool, response, step = await stepped_reply(serve, b"6\r\nsecond\r\n0\r\n\r\n")
    sink = Sink()
    async with asyncio.timeout(5):
        assert await response.read_some() == b"first"
    response.deliver(sink, full=True)  # the sink could not take the events pulled before it
    step.set()
    await asyncio.sleep(0.2)
    assert sink.calls == []  # the connection is not even read meanwhile
    response.resume()
    async with asyncio.timeout(5):
        await sink.until("complete")
    assert sink.calls == [("body", b"second"), ("complete", b"")]
    response.release()
    await pool.aclose()
