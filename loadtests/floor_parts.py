"""What the two floors under the gateway share (``asgi_floor.py``, ``protocol_floor.py``): their
command line, their listening socket, and the upstream side: each request's body posted unchanged to
the same path through the gateway's own ``UpstreamPool``, a whole reply read (an embeddings reply's
vectors checked as the gateway does). The floors differ only in the server in front of it."""

from __future__ import annotations

import argparse
import socket

import msgspec
from yarl import URL

from app.api.embeddings.wire import read_reply
from app.providers.upstream import RequestTemplate, UpstreamPool, UpstreamResponse

MAX_BODY = 1 << 20


def floor_args(description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="0: any free port (READY says which)")
    parser.add_argument("--upstream", required=True, help="the upstream's origin, e.g. http://127.0.0.1:9100")
    parser.add_argument("--max-seconds", type=float, default=600)
    return parser.parse_args()


def loopback_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def wants_stream(body: bytes) -> bool:
    return msgspec.json.decode(body).get("stream") is True


class FloorUpstream:
    """The upstream client and its prepared requests; the pool is made on first use, inside the
    server's loop."""

    def __init__(self, upstream: str) -> None:
        self.origin = URL(upstream)
        self.templates: dict[str, RequestTemplate] = {}
        self.pool: UpstreamPool | None = None

    async def post(self, path: str, body: bytes) -> UpstreamResponse:
        if self.pool is None:
            self.pool = UpstreamPool(self.origin)
        template = self.templates.get(path)
        if template is None:
            headers = {"Content-Type": "application/json", "Authorization": "Bearer floor"}
            template = self.templates[path] = RequestTemplate(self.origin.with_path(path), headers)
        return await self.pool.post(template, body)

    @staticmethod
    async def whole(response: UpstreamResponse, path: str) -> bytes:
        """A reply's whole body, the connection released; an embeddings reply is read as the gateway does."""
        raw = await response.read(limit=64 << 20)
        response.release()
        if path == "/v1/embeddings":
            read_reply(raw)
        return raw

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
