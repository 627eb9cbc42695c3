"""The hot routes' own header and body reads answer exactly as Litestar's ``request.headers`` and
``request.body()`` do, errors included (the routes' error answers come from those exceptions)."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Litestar, Request, post
from litestar.exceptions import HTTPException

from app.transport.request_parts import header, read_body

LIMIT = 100


@post("/x", request_max_body_size=LIMIT)
async def _handler() -> None:
    return None


_APP = Litestar([_handler])
_ROUTE = _APP.routes[0].route_handler_map["POST"][0]  # type: ignore[union-attr]

HEADER_SETS = [
    [],
    [(b"host", b"a"), (b"content-type", b"application/json")],
    [(b"accept", b"text/event-stream"), (b"accept", b"application/json")],  # the first of two
    [(b"authorization", b"Bearer k\xe9y"), (b"x-api-key", b"")],  # latin-1, an empty value
    [(b"traceparent", b"00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01"), (b"cache-control", b"no-cache")],
]
NAMES = ["content-type", "accept", "authorization", "x-api-key", "traceparent", "cache-control", "missing"]


def _request(headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]]) -> Request[Any, Any, Any]:
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "headers": headers, "state": {}, "app": _APP, "route_handler": _ROUTE}
    return Request(scope, receive)  # type: ignore[arg-type]


@pytest.mark.parametrize("headers", HEADER_SETS)
def test_header_is_litestars_first_value(headers: list[tuple[bytes, bytes]]) -> None:
    litestar = _request(headers, []).headers
    for name in NAMES:
        assert header({"headers": headers}, name.encode()) == litestar.get(name)  # type: ignore[typeddict-item]


def _body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


#: name, headers, receive's messages, the status of the error both raise (None: the body).
BODIES: list[tuple[str, list[tuple[bytes, bytes]], list[dict[str, Any]], int | None]] = [
    ("one message", [(b"content-length", b"2")], [_body(b"{}")], None),
    ("empty", [], [_body(b"")], None),
    ("pieces", [], [_body(b"ab", True), _body(b"", True), _body(b"cd")], None),
    ("at the limit", [(b"content-length", b"100")], [_body(b"a" * LIMIT)], None),
    ("announced over", [(b"content-length", b"101")], [_body(b"a")], 413),
    ("read over", [], [_body(b"a" * 60, True), _body(b"a" * 41)], 413),
    ("gone mid-body", [], [_body(b"ab", True)], 500),  # the routes answer it as the client's leaving
    ("bad length", [(b"content-length", b"ten")], [_body(b"a")], 400),
]


async def _outcome(read: Any, request: Request[Any, Any, Any]) -> tuple[str, Any]:
    try:
        return "body", await read(request)
    except HTTPException as exc:
        return type(exc).__name__, (exc.status_code, exc.detail)


@pytest.mark.parametrize(("name", "headers", "messages", "status"), BODIES, ids=[b[0] for b in BODIES])
async def test_read_body_is_request_body(
    name: str, headers: list[tuple[bytes, bytes]], messages: list[Any], status: int | None
) -> None:
    ours = await _outcome(read_body, _request(headers, messages))
    litestars = await _outcome(lambda r: r.body(), _request(headers, messages))
    assert ours == litestars
    if status is None:
        assert ours == ("body", b"".join(m["body"] for m in messages))
    else:
        assert ours[1][0] == status
