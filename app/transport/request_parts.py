"""A request's header values and body read straight from the ASGI scope and ``receive``.

Litestar's ``request.headers`` builds a case-insensitive multidict of every header on first use, and
``request.body()`` reads through an async generator; the hot routes (chat completions, Responses,
Messages, embeddings) read a handful of headers and one body message per request, so they read
them here instead (the figures are in loadtests/README.md). Same answers: a header's first value
(names arrive lower-cased from the server), and the body's limit and errors as ``Request.body``
raises them (413 from the announced length or the bytes read, a client gone mid-body).
"""

from __future__ import annotations

import math
from typing import Any

from litestar import Request
from litestar.exceptions import ClientException, InternalServerException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), as Litestar's ``Headers.get`` gives it."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """``await request.body()``, without the generator: the route's body limit on the announced
    length and on the bytes read, ``InternalServerException`` when the client leaves mid-body."""
    limit = request.route_handler.resolve_request_max_body_size() or math.inf
    announced = header(request.scope, b"content-length")
    if announced is not None:
        try:
            length = int(announced)
        except ValueError:
            raise ClientException(f"Invalid content-length: {announced!r}") from None
        if length > limit:
            raise RequestEntityTooLarge
    receive = request.receive
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            body = message.get("body", b"")
            if body:
                size += len(body)
                if size > limit:
                    raise RequestEntityTooLarge
                parts.append(body)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise InternalServerException("client disconnected prematurely")
    return parts[0] if len(parts) == 1 else b"".join(parts)
