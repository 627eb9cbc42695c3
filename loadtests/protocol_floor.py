"""The floor below ASGI: an HTTP/1.1 server of its own on the gateway's upstream client, nothing else.

    .venv/bin/python -m loadtests.protocol_floor --port 0 --upstream http://127.0.0.1:9100   # prints READY <port>

What the gateway's hot routes would cost on a protocol of the gateway's own (the step after the ASGI
floor, ``asgi_floor.py``) before any gateway logic: one ``asyncio.Protocol`` per client connection
parsing requests with httptools (the parser uvicorn uses), each request's body posted unchanged to
the same path upstream through the gateway's ``UpstreamPool`` from a task of its own (as the
gateway's request runs in one), and the answer written back. JSON: the whole reply (an embeddings
reply's vectors checked as the gateway does) with its head in one write. A streamed answer (``"stream":
true``): the head at once, then the body pushed from the upstream connection's callbacks
(``UpstreamResponse.deliver``) to the client's socket as HTTP chunks, one write per upstream read:
the gateway's push path without its parsing, numbering, log and framing. Keep-alive, one request at
a time per connection (reading pauses while one is answered). Only 127.0.0.1; stops by itself after
``--max-seconds``. Figures in loadtests/README.md.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools
import uvloop

from loadtests.floor_parts import MAX_BODY, FloorUpstream, floor_args, loopback_socket, wants_stream


class _Chunks:
    """A streamed reply's body, as it arrives, written to the client as HTTP chunks (a ``BodySink``)."""

    def __init__(self, transport: asyncio.Transport, done: asyncio.Future[None]) -> None:
        self.transport = transport
        self.done = done

    def body(self, data: bytes) -> bool:
        self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return True

    def complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def lost(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


class _Client(asyncio.Protocol):
    def __init__(self, floor: FloorUpstream) -> None:
        self.floor = floor
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []
        self.size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools' callbacks

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            self._close()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        path = httptools.parse_url(self.url).path.decode("ascii")
        body = b"".join(self.body)
        self.url, self.body, self.size = b"", [], 0
        self.transport.pause_reading()  # one request at a time
        asyncio.get_running_loop().create_task(self._answer(path, body, self.parser.should_keep_alive()))

    async def _answer(self, path: str, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            response = await self.floor.post(path, body)
            if wants_stream(body):
                transport.write(
                    b"HTTP/1.1 %d OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                    b"transfer-encoding: chunked\r\n\r\n" % response.status
                )
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                response.deliver(_Chunks(transport, done))
                await asyncio.wait_for(done, 600)
                response.release()
                transport.write(b"0\r\n\r\n")
            else:
                raw = await self.floor.whole(response, path)
                head = b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                transport.write(head % (response.status, len(raw)) + raw)
        except Exception:
            self._close()
            return
        if keep_alive and self.transport is not None:
            transport.resume_reading()
        else:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def serve(port: int, upstream: str, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    floor = FloorUpstream(upstream)
    sock = loopback_socket(port)
    server = await loop.create_server(lambda: _Client(floor), sock=sock, backlog=4096)
    print(f"READY {sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.sleep(max_seconds)
    finally:
        server.close()
        await floor.aclose()


def main() -> None:
    args = floor_args(__doc__)
    uvloop.run(serve(args.port, args.upstream, args.max_seconds))


if __name__ == "__main__":
    main()
