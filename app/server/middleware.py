"""Raw ASGI middleware: request ids and the one summary log line, compression for JSON only, and
conditional GETs (304) for responses that carry an ETag.

Raw ASGI rather than framework middleware because both sit on every response, streams included,
and must not add per-chunk work beyond a type check.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import msgspec
from litestar.datastructures import MutableScopeHeaders
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from app.api.chat.sse import RAW_SEND
from app.api.messages.errors import MESSAGES_PATHS, anthropic_error_body, anthropic_status
from app.core.context import CONTEXT, RequestContext
from app.core.drain import Drain
from app.domain.errors import GatewayError
from app.observability.failure_log import upstream_failure
from app.observability.log import InfoLine
from app.transport.head_limits import valid_request_id
from app.transport.request_parts import header

RequestObserver = Callable[[Any, int, float], None]


class RequestIdMiddleware:
    """Every response carries X-Request-ID; every HTTP request ends with one summary log line."""

    def __init__(
        self,
        app: ASGIApp,
        observers: list[RequestObserver] | None = None,
        drain: Drain | None = None,
        *,
        info_line: InfoLine,
    ) -> None:
        self.app = app
        self.observers = observers or []
        self.drain = drain
        # The writer configure_logging returned (the same line without structlog's per-call wrapping).
        self.info_line = info_line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = valid_request_id(header(scope, b"x-request-id"))
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        context = state[CONTEXT] = RequestContext(request_id)
        if scope["type"] == "websocket":
            # A socket's frames may go straight to the server's protocol (app/transport/direct_socket.py).
            state[RAW_SEND] = send
            try:
                await self.app(scope, receive, send)
            finally:
                state.pop(RAW_SEND, None)  # the server's send holds the connection, which holds this scope
            return
        started = time.perf_counter()
        status = 500
        encoded_id = request_id.encode("latin-1")
        drain = self.drain
        # Streaming responses write their body messages straight to the server's send: every layer
        # in between only needs the response start (sse.py, RAW_SEND).
        state[RAW_SEND] = send

        def send_with_id(message: Message) -> Awaitable[None]:
            # A plain function returning send's awaitable: no coroutine frame of its own per message.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", encoded_id))
                if drain is not None and drain.refusing and (b"connection", b"close") not in headers:
                    # The listener is closed (the server is draining): the client must not send more on this one.
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            return send(message)

        try:
            if self.drain is not None and self.drain.refusing:
                # A request that arrived after the listener closed (a kept-alive connection): 503.
                await _refuse(send_with_id, self.drain.refusal(), scope["path"], encoded_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            # The server's send is a method of the connection's request cycle, which holds this scope:
            # left in the scope it would make a reference cycle of the request's whole graph.
            state.pop(RAW_SEND, None)
            duration = time.perf_counter() - started
            for observer in self.observers:
                observer(scope, status, duration)
            _log_request(scope, context, status, duration, self.info_line)
            # The error (kept for that line) holds its traceback, whose frames hold this scope: dropped
            # now, a failed request is freed at once instead of waiting, as a cycle, for the collector.
            context.error = None


#: The Messages API's paths (and those under them): their errors are in Anthropic's shape.
_ANTHROPIC_PATHS = tuple(MESSAGES_PATHS)


async def _refuse(
    send: Callable[[Message], Awaitable[None]], error: GatewayError, path: str, request_id: bytes
) -> None:
    status = error.status
    extra: list[tuple[bytes, bytes]] = []
    if path.startswith(_ANTHROPIC_PATHS):
        # An Anthropic SDK (Claude Code) retries a 529 overloaded_error; our 503 body would be read
        # as an unknown error.
        body = anthropic_error_body(error)
        status = anthropic_status(error)
        extra.append((b"request-id", request_id))
    else:
        body = msgspec.json.encode(error.body())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _log_request(scope: Scope, context: RequestContext, status: int, duration: float, write: InfoLine) -> None:
    fields: dict[str, Any] = {
        "method": scope.get("method"),
        "route": scope.get("path_template") or scope.get("path"),
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        **context.log_fields(),
    }
    error = context.failure
    if error is not None:  # which deployment, host and exception: "status": 502 alone tells an operator nothing
        fields.update(upstream_failure(scope, fields.get("model"), error))
    write("request", fields)


#: Bodies at least this large are compressed in a worker thread, not on the event loop.
OFF_LOOP_BYTES = 256 * 1024


class JsonCompressionMiddleware:
    """gzip for whole JSON bodies of at least ``minimum_size`` bytes; streams pass untouched.

    A response that announces ``more_body`` is a stream and is never compressed or buffered,
    which is what keeps SSE flushing token by token.
    """

    def __init__(self, app: ASGIApp, minimum_size: int = 1024) -> None:
        self.app = app
        self.minimum_size = minimum_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "gzip" not in (header(scope, b"accept-encoding") or "").lower():
            await self.app(scope, receive, send)
            return
        start: Message | None = None

        async def send_maybe_compressed(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                content_type = MutableScopeHeaders(cast(Any, message)).get("content-type") or ""
                if not content_type.lower().startswith("application/json"):
                    # Not JSON (an SSE stream, the page): nothing to compress, and a stream's body
                    # may not even come back through here (sse.py, RAW_SEND).
                    await send(message)
                    return
                start = message
                return
            if start is None:
                await send(message)
                return
            pending, start = start, None
            body = cast(bytes, message.get("body", b""))
            headers = MutableScopeHeaders(cast(Any, pending))
            content_type = (headers.get("content-type") or "").lower()
            if (
                message["type"] == "http.response.body"
                and not message.get("more_body", False)
                and content_type.startswith("application/json")
                and len(body) >= self.minimum_size
                and "content-encoding" not in headers
            ):
                if len(body) < OFF_LOOP_BYTES:
                    body = gzip.compress(body, compresslevel=5)
                else:
                    # zlib lets go of the GIL while it works: in a thread, the loop serves every other
                    # stream meanwhile (a large embeddings answer took the loop for tens of ms a MB).
                    body = await asyncio.to_thread(gzip.compress, body, compresslevel=5)
                headers["Content-Encoding"] = "gzip"
                headers["Content-Length"] = str(len(body))
                headers.extend_header_value("Vary", "Accept-Encoding")
                message = {**message, "body": body}
            await send(pending)
            await send(message)

        await self.app(scope, receive, send_maybe_compressed)


def _etag_matches(if_none_match: str, etag: bytes) -> bool:
    """RFC 9110 13.1.2: ``If-None-Match`` matches with "*" or with any listed tag, compared weakly
    (a ``W/`` prefix on either side is ignored)."""
    tag = etag.decode("latin-1").strip().removeprefix("W/")
    for listed in if_none_match.split(","):
        listed = listed.strip()
        if listed == "*" or listed.removeprefix("W/") == tag:
            return True
    return False


#: What a 304 keeps of the 200 it stands for (RFC 9110 15.4.5), and the request's id.
_NOT_MODIFIED_KEEPS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"x-request-id"}
)


class ConditionalGetMiddleware:
    """``GET`` or ``HEAD`` with ``If-None-Match`` answered ``304 Not Modified``, without its body,
    when the response it would get is a 200 whose ``ETag`` matches (the page and its static files,
    which are served ``no-cache`` so that browsers revalidate on every load). Litestar sets the
    ETag of a file it serves but does not compare it: without this, a revalidation downloaded the
    whole file again. Every other request passes untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or cast(HTTPScope, scope)["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        if_none_match = header(scope, b"if-none-match")
        if not if_none_match:
            await self.app(scope, receive, send)
            return
        answered = False  # a 304 went out: what the app still sends is dropped

        async def send_conditional(message: Message) -> None:
            nonlocal answered
            if answered:
                return
            if message["type"] == "http.response.start" and message["status"] == 200:
                headers = message.get("headers") or []
                etag = next((value for name, value in headers if name.lower() == b"etag"), None)
                if etag is not None and _etag_matches(if_none_match, etag):
                    answered = True
                    kept = [(n, v) for n, v in headers if n.lower() in _NOT_MODIFIED_KEEPS]
                    await send({"type": "http.response.start", "status": 304, "headers": kept})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
            await send(message)

        await self.app(scope, receive, send_conditional)
