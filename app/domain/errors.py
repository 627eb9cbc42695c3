"""The gateway's error tree and its one mapping to HTTP statuses, error types and codes.

Each ``GatewayError`` subclass is one (status, type, code); ``CODES`` lists every code the gateway
itself sends, including those raised with an explicit ``code=`` (a field's path aside), and
``docs/errors.md`` documents exactly these (``tests/project/test_errors_doc.py`` compares them both ways, so a
new code cannot ship undocumented). Provider replies and LiteLLM's exception classes are translated
into this tree at the provider boundary (``app/providers/translate.py``); this module only says what
each error is on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, NamedTuple

import msgspec


class ErrorCode(NamedTuple):
    status: int
    type: str
    code: str


#: Every (status, type, code) the gateway sends of its own accord. A provider's own 400 keeps the
#: provider's code, and a field that fails validation is named by its path: neither is listed here.
CODES: tuple[ErrorCode, ...] = (
    ErrorCode(400, "invalid_request_error", "invalid_request"),
    ErrorCode(400, "invalid_request_error", "invalid_parameter"),
    ErrorCode(400, "invalid_request_error", "context_length_exceeded"),
    ErrorCode(400, "invalid_request_error", "unsupported_parameter"),
    ErrorCode(400, "invalid_request_error", "too_deep"),
    ErrorCode(400, "invalid_request_error", "duplicate_id"),
    ErrorCode(400, "invalid_request_error", "unsupported_content"),
    ErrorCode(400, "invalid_request_error", "model_not_supported"),
    ErrorCode(400, "invalid_request_error", "previous_response_not_found"),
    ErrorCode(400, "invalid_request_error", "response_in_progress"),
    ErrorCode(401, "authentication_error", "invalid_api_key"),
    ErrorCode(403, "permission_error", "model_not_allowed"),
    ErrorCode(404, "invalid_request_error", "model_not_found"),
    ErrorCode(404, "invalid_request_error", "not_found"),
    ErrorCode(404, "invalid_request_error", "stream_not_found"),
    ErrorCode(404, "invalid_request_error", "response_not_found"),
    ErrorCode(405, "invalid_request_error", "method_not_allowed"),
    ErrorCode(409, "invalid_request_error", "invalid_resume_position"),
    ErrorCode(409, "invalid_request_error", "stream_cancelled"),
    ErrorCode(413, "invalid_request_error", "payload_too_large"),
    ErrorCode(414, "invalid_request_error", "uri_too_long"),
    ErrorCode(415, "invalid_request_error", "unsupported_media_type"),
    ErrorCode(431, "invalid_request_error", "headers_too_large"),
    ErrorCode(429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode(429, "insufficient_quota", "budget_exceeded"),
    ErrorCode(500, "server_error", "internal_error"),
    ErrorCode(502, "upstream_error", "upstream_unavailable"),
    ErrorCode(502, "upstream_error", "upstream_authentication"),
    ErrorCode(502, "upstream_error", "upstream_model_not_found"),
    ErrorCode(503, "upstream_error", "upstream_overloaded"),
    ErrorCode(503, "server_error", "server_shutting_down"),
    ErrorCode(503, "server_error", "resume_store_unavailable"),
    ErrorCode(503, "server_error", "response_store_unavailable"),
    ErrorCode(503, "server_error", "too_many_connections"),
    ErrorCode(504, "timeout_error", "upstream_timeout"),
)


class ErrorObject(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorObject


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str] = "internal_error"
    #: The stream outcome recorded when this error ends a stream.
    outcome: ClassVar[str] = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.retry_after = retry_after
        #: The provider's own (redacted) words, for the log when the message shown is ours.
        self.detail: str | None = None
        #: Set once the provider boundary has made the message safe to show (providers/quoting.py).
        self.quoted = False

    def body(self) -> ErrorBody:
        return ErrorBody(ErrorObject(message=self.message, type=self.type, param=self.param, code=self.code))

    def log_fields(self) -> dict[str, str]:
        """The error's part of a request's log line: its code, and the provider's own (redacted)
        words where the client was shown ours, else the message."""
        return {"error_code": self.code, "error_detail": self.detail if self.detail is not None else self.message}

    def headers(self) -> dict[str, str]:
        if self.status == 429:
            return {"Retry-After": str(self.retry_after if self.retry_after is not None else 1)}
        return {}


class InvalidRequest(GatewayError):
    status, type, default_code, outcome = 400, "invalid_request_error", "invalid_request", "upstream_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class ProviderRejected(InvalidRequest):
    default_code = "invalid_request"


class ModelNotSupported(InvalidRequest):
    """The model cannot serve this API: a chat model for embeddings, or an embedding model for chat."""

    default_code = "model_not_supported"


class Unauthenticated(GatewayError):
    status, type, default_code = 401, "authentication_error", "invalid_api_key"


class ModelNotFound(GatewayError):
    status, type, default_code = 404, "invalid_request_error", "model_not_found"


class PayloadTooLarge(GatewayError):
    status, type, default_code = 413, "invalid_request_error", "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status, type, default_code = 415, "invalid_request_error", "unsupported_media_type"


class RateLimited(GatewayError):
    status, type, default_code = 429, "rate_limit_error", "rate_limit_exceeded"


class ModelNotAllowed(GatewayError):
    status, type, default_code = 403, "permission_error", "model_not_allowed"


class BudgetExceeded(GatewayError):
    status, type, default_code = 429, "insufficient_quota", "budget_exceeded"

    def headers(self) -> dict[str, str]:
        # A `total` budget never resets: no Retry-After promises a moment that will not come.
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class UpstreamError(GatewayError):
    status, type, default_code = 502, "upstream_error", "upstream_unavailable"


class UpstreamAuthentication(UpstreamError):
    default_code = "upstream_authentication"


class UpstreamModelNotFound(UpstreamError):
    default_code = "upstream_model_not_found"


class UpstreamUnavailable(UpstreamError):
    default_code = "upstream_unavailable"


class UpstreamOverloaded(UpstreamError):
    status, default_code = 503, "upstream_overloaded"


class UpstreamTimeout(GatewayError):
    status, type, default_code, outcome = 504, "timeout_error", "upstream_timeout", "timeout"


class StreamNotFound(GatewayError):
    status, type, default_code = 404, "invalid_request_error", "stream_not_found"


class InvalidResumePosition(GatewayError):
    status, type, default_code = 409, "invalid_request_error", "invalid_resume_position"


class StreamCancelled(GatewayError):
    """The stream was stopped (DELETE, a cancel, or nobody resumed it in time): its readers' last event."""

    status, type, default_code, outcome = 409, "invalid_request_error", "stream_cancelled", "cancelled"


class ResumeUnavailable(GatewayError):
    status, type, default_code = 503, "server_error", "resume_store_unavailable"


class ReplayedError(GatewayError):
    """An error event read back from a stream log (another replica's): the same body, the same status."""

    def __init__(self, status: int, error: ErrorObject) -> None:
        super().__init__(error.message, code=error.code, param=error.param)
        self.status = status  # type: ignore[misc]
        self.type = error.type  # type: ignore[misc]


class ServerShuttingDown(GatewayError):
    status, type, default_code, outcome = 503, "server_error", "server_shutting_down", "shutdown"


class InternalError(GatewayError):
    pass


def public_error(exc: BaseException, *, production: bool, redact: Callable[[str], str] | None = None) -> GatewayError:
    """Any exception -> the GatewayError to show a client: 500s hide their detail in production, and
    in development show it with ``redact`` applied (it may quote a library's or a provider's text)."""
    if isinstance(exc, GatewayError):
        return exc
    if production:
        return InternalError("The server had an error while processing your request.")
    detail = f"{type(exc).__name__}: {exc}"
    return InternalError(redact(detail) if redact is not None else detail)
