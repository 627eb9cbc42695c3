"""``POST /v1/responses`` served beside Litestar's per-request pipeline, as the chat route is
(``routes/chat_direct.py``, which says what that pipeline costs and what is kept): the same handler
function (``create_response``), the same route handler in the scope (body limit, exception
handlers, type encoders), ``JsonCompressionMiddleware`` and Litestar's exception middleware around
it. Every other request goes to ``fallback``. Not used with CORS configured.
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

from app.routes.responses import RESPONSES_PATHS, ResponsesContext, create_response
from app.server.middleware import JsonCompressionMiddleware

_PATHS = frozenset(RESPONSES_PATHS)


class ResponsesRoute:
    def __init__(
        self, app: Litestar, fallback: ASGIApp, context: Callable[[Request[Any, Any, Any]], ResponsesContext]
    ) -> None:
        self._fallback = fallback
        self._context = context
        handler = _create_handler(app)
        self._handler = handler
        self._exception_handlers = handler.resolve_exception_handlers()
        self._type_encoders = handler.resolve_type_encoders()
        self._app = _exceptions(JsonCompressionMiddleware(_exceptions(self._handle)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_create(cast("HTTPScope", scope)):
            await self._fallback(scope, receive, send)
            return
        scope["path_params"] = {}
        scope["route_handler"] = self._handler
        scope["path_template"] = scope["path"]
        ScopeState.from_scope(scope).exception_handlers = self._exception_handlers
        await self._app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        host = request.headers.get("host")
        if host is not None and not is_valid_host(host.encode("latin-1")):
            raise ClientException("Invalid host header")
        response = await create_response(request, self._context(request))
        asgi = response.to_asgi_response(app=None, request=request, type_encoders=self._type_encoders)
        await asgi(scope, receive, send)


def _is_create(scope: HTTPScope) -> bool:
    return scope["method"] == "POST" and scope["path"] in _PATHS and not scope.get("root_path")


def _exceptions(app: ASGIApp) -> ASGIApp:
    return ExceptionHandlerMiddleware(app, None)


def _create_handler(app: Litestar) -> HTTPRouteHandler:
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path in _PATHS and "POST" in route.route_handler_map:
            return route.route_handler_map["POST"][0]
    raise LookupError("the Responses create route is not registered")
