"""Opening a connection: TCP, TLS with ALPN, and the protocol the provider picked.

TLS connections offer ``h2`` and ``http/1.1`` by ALPN; which one the provider picked is known only
once the handshake is done, inside ``connection_made``. A small negotiating protocol sees it there,
hands the transport to an HTTP/2 or an HTTP/1.1 connection (``transport.set_protocol``), and
steps out of the way, so no per-chunk call goes through an extra layer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.providers.egress import Proxy, open_tunnel
from app.providers.upstream.connection import Connection
from app.providers.upstream.http2 import HTTP2Connection
from app.providers.upstream.http11 import HTTP11Connection

if TYPE_CHECKING:
    from app.providers.upstream.pool import UpstreamPool

ALPN_PROTOCOLS = ["h2", "http/1.1"]


def client_ssl_context(ssl_context: ssl.SSLContext | None) -> ssl.SSLContext:
    """The given context (or the system trust store's, as aiohttp and httpx use) offering ALPN."""
    context = ssl_context or ssl.create_default_context()
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


class _Negotiating(asyncio.Protocol):
    """Stands in until the TLS handshake is done, then gives the transport to the chosen protocol."""

    def __init__(self, on_change: Callable[[Connection], None]) -> None:
        self.on_change = on_change
        self.connection: Connection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        speaks_h2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        connection = HTTP2Connection(self.on_change) if speaks_h2 else HTTP11Connection(self.on_change)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        self.connection = connection


async def open_connection(
    pool: UpstreamPool, host: str, port: int, ssl_context: ssl.SSLContext | None, proxy: Proxy | None = None
) -> Connection:
    """A connected HTTP/1.1 or HTTP/2 connection to ``host:port`` (TLS when ``ssl_context`` is given),
    through a CONNECT tunnel when ``proxy`` is given (TLS then runs end to end inside the tunnel)."""
    loop = asyncio.get_running_loop()
    sock = await open_tunnel(proxy, host, port) if proxy is not None else None
    if ssl_context is None:
        if sock is not None:
            _, connection = await loop.create_connection(lambda: HTTP11Connection(pool.connection_changed), sock=sock)
        else:
            _, connection = await loop.create_connection(lambda: HTTP11Connection(pool.connection_changed), host, port)
        return connection
    negotiating = _Negotiating(pool.connection_changed)
    if sock is not None:
        await loop.create_connection(lambda: negotiating, sock=sock, ssl=ssl_context, server_hostname=host)
    else:
        await loop.create_connection(lambda: negotiating, host, port, ssl=ssl_context, server_hostname=host)
    assert negotiating.connection is not None
    return negotiating.connection
