"""The chat route served beside Litestar's per-request pipeline: the hottest path, with less between.

Litestar's pipeline for one request (its exception middleware twice, the router, the route's kwargs
model and dependency resolution, the signature model validating the handler's arguments, the
handler's response conversion) is work the chat route does not need on every call (the figures are
in loadtests/README.md). ``ChatRoute`` serves ``POST`` on the chat paths with the same handler
function (``create_chat_completion``), the same route handler in the scope (so the request's body
limit, exception handlers and type encoders resolve as before), the same middleware
(``JsonCompressionMiddleware``) and Litestar's own exception middleware around it, so an error
answers exactly as through the router. Everything else, including the chat paths with any other
method or a trailing slash, goes to Litestar. Not used with CORS configured: Litestar's CORS
middleware sits in front of its router, and a preflight or a cross-origin response must get it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from litestar import Litestar, Request
from litestar._asgi.utils import is_valid_host
from litestar.exceptions import ClientException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware._internal.exceptions.middleware import ExceptionHandlerMiddleware
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

from app.routes.chat import CHAT_PATHS, ChatContext, create_chat_completion
from app.server.middleware import JsonCompressionMiddleware

_PATHS = frozenset(CHAT_PATHS)


class ChatRoute:
    """An ASGI app in front of Litestar's: chat completions here, everything else to ``fallback``."""

    def __init__(
        self, app: Litestar, fallback: ASGIApp, context: Callable[[Request[Any, Any, Any]], ChatContext]
    ) -> None:
        self._fallback = fallback
        self._context = context
        handler = _chat_handler(app)
        self._handler = handler
        self._exception_handlers = handler.resolve_exception_handlers()
        self._type_encoders = handler.resolve_type_encoders()
        # The app's exception middleware, the route's middleware, the route's exception middleware: the
        # layers the router's path had around the handler.
        self._app = _exceptions(JsonCompressionMiddleware(_exceptions(self._handle)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_chat(cast("HTTPScope", scope)):
            await self._fallback(scope, receive, send)
            return
        # What Litestar's router would have set for this route.
        scope["path_params"] = {}
        scope["route_handler"] = self._handler
        scope["path_template"] = scope["path"]
        ScopeState.from_scope(scope).exception_handlers = self._exception_handlers
        await self._app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        host = request.headers.get("host")
        if host is not None and not is_valid_host(host.encode("latin-1")):
            raise ClientException("Invalid host header")  # as Litestar's router answers it
        response = await create_chat_completion(request, self._context(request))
        asgi = response.to_asgi_response(app=None, request=request, type_encoders=self._type_encoders)
        await asgi(scope, receive, send)


def _is_chat(scope: HTTPScope) -> bool:
    return scope["method"] == "POST" and scope["path"] in _PATHS and not scope.get("root_path")


def _exceptions(app: ASGIApp) -> ASGIApp:
    # debug=None: read from the app in the scope, as Litestar's own instances do.
    return ExceptionHandlerMiddleware(app, None)


def _chat_handler(app: Litestar) -> HTTPRouteHandler:
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path in _PATHS and "POST" in route.route_handler_map:
            return route.route_handler_map["POST"][0]
    raise LookupError("the chat route is not registered")
