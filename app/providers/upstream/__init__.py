"""The relay's own HTTP client: keep-alive pools per upstream origin, a POST, a streamed body.

The relay needs one thing from a client: write a prepared request on a warm connection and hand
over the response body as it arrives. aiohttp does that and much more, and the more is paid on
every call (several coroutine and iterator layers per request and per body chunk; the comparison is
in loadtests/README.md). Here a request is one ``transport.write`` on a pooled connection, and
body bytes go from the protocol callback to the reader with one future wake-up. TLS is asyncio's
(the system's trust store, as aiohttp uses); there is no proxy, redirect or cookie support, which an
API relay does not use.

Laid out as httpcore is:

- ``pool``: ``UpstreamPool``, the connections to one origin, their limit and keep-alive expiry;
- ``connect``: TCP, TLS and ALPN, choosing the connection's protocol;
- ``connection``: what every connection is (``ConnectionState``, the two ways it ends);
- ``http11``: HTTP/1.1 on httptools (the parser uvicorn serves with);
- ``http2``: HTTP/2 on ``h2`` (httpx's), where a TLS upstream offers it by ALPN;
- ``response``: ``UpstreamResponse``, one call's state and body buffer;
- ``request``: ``RequestTemplate``, a deployment's POST prepared once;
- ``errors``: what the client raises (the relay maps it to the gateway's errors).
"""

from app.providers.upstream.connection import ConnectionState
from app.providers.upstream.errors import StaleConnection, UpstreamConnectionError
from app.providers.upstream.pool import UpstreamPool
from app.providers.upstream.request import RequestTemplate
from app.providers.upstream.response import ResponseState, UpstreamResponse

__all__ = [
    "ConnectionState",
    "RequestTemplate",
    "ResponseState",
    "StaleConnection",
    "UpstreamConnectionError",
    "UpstreamPool",
    "UpstreamResponse",
]
