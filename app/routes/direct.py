"""The hottest routes served beside Litestar's per-request pipeline, with less between.

Litestar's pipeline for one request (its exception middleware twice, the router, the route's kwargs
model and dependency resolution, the signature model validating the handler's arguments, the
handler's response conversion) is work these routes do not need on every call (the figures are in
loadtests/README.md). ``DirectRoutes`` serves ``POST`` on the paths of a table of ``Direct`` entries
(chat completions, Responses, Messages, embeddings: see ``app/app.py``), each with the same handler function its
route calls, the same route handler in the scope (so the request's body limit, exception handlers
and type encoders resolve as before: the Messages route's answer errors in Anthropic's shape), the
same middleware (``JsonCompressionMiddleware``) and Litestar's own exception middleware around it,
so an error answers exactly as through the router. A plain answer (bytes, as the JSON routes return)
is sent as the two messages Litestar's response would send, built without its response and header
objects; anything else (a stream, an error) goes through Litestar's response. Everything else,
including these paths with any other method or a trailing slash, goes to Litestar. Not used with
CORS configured: Litestar's CORS middleware sits in front of its router, and a preflight or a
cross-origin response must get it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from litestar import Litestar, Request, Response
from litestar._asgi.utils import is_valid_host
from litestar.exceptions import ClientException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware._internal.exceptions.middleware import ExceptionHandlerMiddleware
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, HTTPResponseStartEvent, HTTPScope, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

from app.server.middleware import JsonCompressionMiddleware

ContextT = TypeVar("ContextT")
AnyRequest = Request[Any, Any, Any]


@dataclass(frozen=True, slots=True)
class Direct(Generic[ContextT]):
    """One route served directly: its ``POST`` paths, the function its route handler calls, and the
    factory of that function's one dependency (what the router would have injected)."""

    paths: Sequence[str]
    handle: Callable[[AnyRequest, ContextT], Awaitable[Response[Any]]]
    context: Callable[[AnyRequest], ContextT]


def _served(app: Litestar, direct: Direct[Any]) -> ASGIApp:
    """``direct`` bound to its registered route handler, wrapped as the router's path wraps it."""
    handler = _post_handler(app, direct.paths)
    app_exception_handlers = app.exception_handlers
    exception_handlers = handler.resolve_exception_handlers()
    type_encoders = handler.resolve_type_encoders()
    handle, context = direct.handle, direct.context

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        # What Litestar's router does for this route: a bad Host is answered by the app's handlers
        # (no route was chosen), then the route's handler and its exception handlers go in the scope.
        state = ScopeState.from_scope(scope)
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        if host is not None and not is_valid_host(host):
            state.exception_handlers = app_exception_handlers
            raise ClientException("Invalid host header")
        scope["path_params"] = {}
        scope["route_handler"] = handler
        scope["path_template"] = scope["path"]
        state.exception_handlers = exception_handlers
        request: AnyRequest = Request(scope, receive, send)
        response = await handle(request, context(request))
        start = _plain_start(response)
        if start is not None:
            await send(start)
            await send({"type": "http.response.body", "body": response.content, "more_body": False})
            return
        asgi = response.to_asgi_response(app=None, request=request, type_encoders=type_encoders)
        await asgi(scope, receive, send)

    # The route's middleware around one exception middleware. Through the router there are two (the
    # app's in front of the router, the route's around the handler), but both read the handlers the
    # scope names when they catch, which ``route`` sets (the app's for a bad Host, else the route's),
    # so the outer one could only catch what the inner one already answered.
    return JsonCompressionMiddleware(_exceptions(route))


def _plain_start(response: Response[Any]) -> HTTPResponseStartEvent | None:
    """The start message of ``response`` when it is a plain body (bytes, no cookies, no background
    task, a status that has a body): the message Litestar's ASGI response would send, built without
    its header object. None for anything else, which goes through Litestar."""
    content = response.content
    status = response.status_code or 200
    if (
        type(response) is not Response
        or type(content) is not bytes
        or response.cookies
        or response.background is not None
        or status < 200
        or status in (204, 304)
    ):
        return None
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in response.headers.items()]
    names = {name for name, _ in headers}
    if b"content-type" not in names:
        media = response.media_type or "application/json"
        if not isinstance(media, str):
            return None  # an enum member: Litestar's to handle
        if media.startswith("text/"):
            media = f"{media}; charset={response.encoding}"
        headers.append((b"content-type", media.encode("latin-1")))
    if b"content-length" not in names:
        headers.append((b"content-length", str(len(content)).encode("latin-1")))
    return {"type": "http.response.start", "status": status, "headers": headers}


class DirectRoutes:
    """An ASGI app in front of Litestar's: ``POST`` on the table's paths here, everything else to ``fallback``."""

    def __init__(self, app: Litestar, fallback: ASGIApp, routes: Sequence[Direct[Any]]) -> None:
        self._fallback = fallback
        self._by_path: dict[str, ASGIApp] = {}
        for direct in routes:
            served = _served(app, direct)
            for path in direct.paths:
                if path in self._by_path:
                    raise ValueError(f"{path} is served directly twice")
                self._by_path[path] = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        served = self._by_path.get(scope["path"]) if scope["type"] == "http" else None
        if served is None or cast("HTTPScope", scope)["method"] != "POST" or scope.get("root_path"):
            await self._fallback(scope, receive, send)
            return
        await served(scope, receive, send)


def _exceptions(app: ASGIApp) -> ASGIApp:
    # debug=None: read from the app in the scope, as Litestar's own instances do.
    return ExceptionHandlerMiddleware(app, None)


def _post_handler(app: Litestar, paths: Sequence[str]) -> HTTPRouteHandler:
    wanted = frozenset(paths)
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path in wanted and "POST" in route.route_handler_map:
            return route.route_handler_map["POST"][0]
    raise LookupError(f"no POST route is registered on {sorted(wanted)}")
