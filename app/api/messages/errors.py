"""Gateway errors in the Anthropic Messages API's shape.

Section 4's statuses, Anthropic's error types, so that an Anthropic SDK raises the exception class
it would raise against Anthropic: a 503 (provider overloaded, server draining) is Anthropic's 529
``overloaded_error``; 500 and 502 are ``api_error``; 504 is ``timeout_error``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from app.domain.errors import GatewayError

OVERLOADED_STATUS: Final = 529
#: The Messages API's paths: errors on them, and on the paths under them, are in this shape.
MESSAGES_PATHS: Final = ["/v1/messages", "/api/messages"]

_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    414: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class AnthropicError(msgspec.Struct):
    type: str
    message: str


class AnthropicErrorBody(msgspec.Struct, tag_field="type", tag="error"):
    error: AnthropicError


def anthropic_status(error: GatewayError) -> int:
    return OVERLOADED_STATUS if error.status == 503 else error.status


def anthropic_type(status: int) -> str:
    return _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(error: GatewayError) -> bytes:
    kind = anthropic_type(error.status)
    return msgspec.json.encode(AnthropicErrorBody(AnthropicError(type=kind, message=error.message)))
