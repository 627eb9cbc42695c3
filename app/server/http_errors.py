"""Exception handlers: every error leaves as the contract's OpenAI error body (API.md 4)."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE

from app.core.context import context_of
from app.domain.errors import (
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
    public_error,
)

logger = structlog.get_logger("chat.errors")


def error_response(error: GatewayError) -> Response[Any]:
    return Response(content=error.body(), status_code=error.status, headers=error.headers())


class _HTTPError(GatewayError):
    """A framework-level HTTP error (404 route, 405 method) in the contract's shape."""

    type = "invalid_request_error"

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message, code=code)
        self.status = status  # type: ignore[misc]


def _production(request: Request[Any, Any, Any]) -> bool:
    settings = getattr(request.app.state, "settings", None)
    return bool(settings and settings.production)


def handle_gateway_error(request: Request[Any, Any, Any], exc: GatewayError) -> Response[Any]:
    context = context_of(request.scope)
    context.error = exc  # for the request's log line
    response = error_response(exc)
    rate_headers = context.rate_headers
    if rate_headers:
        # A limited key's x-ratelimit-* headers go on every response, errors included (API.md 4).
        for name, value in rate_headers.items():
            response.headers.setdefault(name, value)
    return response


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if exc.status_code == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        return error_response(PayloadTooLarge("The request body is larger than the server accepts."))
    if isinstance(exc, ValidationException):
        return error_response(InvalidRequest(str(exc.detail)))
    if isinstance(exc, NotFoundException):
        return error_response(_HTTPError(404, f"No route for {request.method} {request.url.path}.", "not_found"))
    if exc.status_code >= 500:
        return handle_unexpected(request, exc)
    code = "method_not_allowed" if exc.status_code == 405 else "invalid_request"
    return error_response(_HTTPError(exc.status_code, str(exc.detail), code))


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    context_of(request.scope).error = exc  # for the request's log line (app/server/middleware.py)
    logger.error(
        "unhandled_error",
        request_id=request.scope.get("state", {}).get("request_id"),
        route=request.scope.get("path_template"),
        exc_info=exc,
    )
    return error_response(public_error(exc, production=_production(request)))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    GatewayError: handle_gateway_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
