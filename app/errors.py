"""The gateway's error tree and its one mapping to API.md section 4.

    GatewayError                       status  type                    code
    ├── InvalidRequest                 400     invalid_request_error   invalid_request / the field
    ├── ContextLengthExceeded          400     invalid_request_error   context_length_exceeded
    ├── ProviderRejected               400     invalid_request_error   the provider's code
    ├── Unauthenticated                401     authentication_error    invalid_api_key
    ├── ModelNotFound                  404     invalid_request_error   model_not_found
    ├── PayloadTooLarge                413     invalid_request_error   payload_too_large
    ├── UnsupportedMediaType           415     invalid_request_error   unsupported_media_type
    ├── RateLimited                    429     rate_limit_error        rate_limit_exceeded
    ├── UpstreamAuthentication         502     upstream_error          upstream_authentication
    ├── UpstreamModelNotFound          502     upstream_error          upstream_model_not_found
    ├── UpstreamUnavailable            502     upstream_error          upstream_unavailable
    ├── UpstreamOverloaded             503     upstream_error          upstream_overloaded
    ├── UpstreamTimeout                504     timeout_error           upstream_timeout
    └── InternalError                  500     server_error            internal_error

LiteLLM's exception classes are translated at the provider boundary by ``from_litellm``; transports
only ever see a ``GatewayError``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import msgspec


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


class InternalError(GatewayError):
    pass


def public_error(exc: BaseException, *, production: bool) -> GatewayError:
    """Any exception -> the GatewayError to show a client (500s hide their detail in production)."""
    if isinstance(exc, GatewayError):
        return exc
    if production:
        return InternalError("The server had an error while processing your request.")
    return InternalError(f"{type(exc).__name__}: {exc}")


def _retry_after_header(exc: Any) -> str | None:
    """The provider's Retry-After, wherever LiteLLM or the openai SDK kept the response headers."""
    headers: Any = None
    response = getattr(exc, "response", None)
    if response is not None:
        headers = getattr(response, "headers", None)
    headers = headers or getattr(exc, "litellm_response_headers", None) or getattr(exc, "headers", None)
    try:
        value = headers.get("retry-after") or headers.get("Retry-After") if headers else None
    except AttributeError:
        return None
    return str(value) if value is not None else None


def _provider_code(exc: Any) -> str | None:
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code:
        return code
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    return None


def _provider_message(exc: Any) -> str:
    message = str(getattr(exc, "message", "") or exc)
    # LiteLLM prefixes "litellm.BadRequestError: OpenAIException - "; clients want the provider's words.
    marker = "Exception - "
    if marker in message:
        message = message.split(marker, 1)[1]
    # What follows the first line is LiteLLM's advice on its own router settings, not the provider's answer.
    return message.split("\n", 1)[0][:2000]


def _seconds(value: str | None) -> int | None:
    try:
        return max(0, math.ceil(float(value))) if value else None
    except ValueError:
        return None


def from_provider_reply(
    status: int, message: str, code: str | None, retry_after: str | None, *, in_stream: bool = False
) -> GatewayError:
    """A provider's HTTP error reply -> the most specific GatewayError (the fast path's mapping,
    and the full path's fallback where LiteLLM's exception class says no more than a status)."""
    lowered = message.lower()
    if code == "context_length_exceeded" or "context length" in lowered or "maximum context" in lowered:
        return ContextLengthExceeded(message)
    if status in (401, 403):
        return UpstreamAuthentication("The provider rejected the gateway's credentials.")
    if status == 404:
        return UpstreamModelNotFound(f"The provider does not know the configured model: {message}")
    if status == 429:
        return RateLimited(message or "The provider's rate limit was reached.", retry_after=_seconds(retry_after))
    if 400 <= status < 500:
        return ProviderRejected(message or f"The provider rejected the request ({status}).", code=code)
    if status >= 500 and not in_stream:
        return UpstreamOverloaded(f"The provider failed: {message or status}")
    return UpstreamUnavailable(f"The provider's stream reported an error: {message or status}")


def from_litellm(exc: BaseException) -> GatewayError:
    """Translate a LiteLLM (or openai SDK) exception into the most specific GatewayError."""
    # The provider layer has imported LiteLLM already; importing here keeps this module light.
    import litellm
    from litellm.exceptions import MidStreamFallbackError

    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, MidStreamFallbackError):
        # LiteLLM wraps a stream that broke off; the wrapped cause says what really happened.
        original = getattr(exc, "original_exception", None)
        if isinstance(original, BaseException) and not isinstance(original, MidStreamFallbackError):
            return from_litellm(original)
        return UpstreamUnavailable("The provider's stream broke off.")
    message = _provider_message(exc)
    if isinstance(exc, litellm.ContextWindowExceededError):
        return ContextLengthExceeded(message)
    status = getattr(exc, "status_code", None)
    if status in (401, 403):
        # Whatever class LiteLLM picked (a 403 can arrive as a plain APIError): the provider refused our key.
        return UpstreamAuthentication("The provider rejected the gateway's credentials.")
    if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError):
        return UpstreamAuthentication("The provider rejected the gateway's credentials.")
    if isinstance(exc, litellm.NotFoundError):
        return UpstreamModelNotFound(f"The provider does not know the configured model: {message}")
    if isinstance(exc, litellm.RateLimitError):
        return RateLimited(message, retry_after=_seconds(_retry_after_header(exc)))
    if isinstance(exc, litellm.Timeout):
        return UpstreamTimeout("The provider did not answer in time.")
    if isinstance(exc, litellm.BadRequestError | litellm.UnprocessableEntityError):
        return ProviderRejected(message, code=_provider_code(exc))
    if isinstance(exc, litellm.APIConnectionError):
        return UpstreamUnavailable(f"The provider could not be reached or its answer broke off: {message}")
    if isinstance(status, int) and (status == 429 or status >= 500):
        return from_provider_reply(status, message, None, _retry_after_header(exc))
    if isinstance(exc, litellm.APIError | litellm.ServiceUnavailableError | litellm.InternalServerError):
        return UpstreamOverloaded(f"The provider failed: {message}")
    return UpstreamUnavailable(f"The provider's answer could not be read: {message}")
