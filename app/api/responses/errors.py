"""The Responses API's own errors (docs/errors.md): unknown previous or stored responses, an unreachable store."""

from __future__ import annotations

from app.domain.errors import GatewayError, InvalidRequest


class PreviousResponseNotFound(InvalidRequest):
    default_code = "previous_response_not_found"


class ResponseNotFound(GatewayError):
    status, type, default_code = 404, "invalid_request_error", "response_not_found"


class ResponseStoreUnavailable(GatewayError):
    status, type, default_code = 503, "server_error", "response_store_unavailable"
