"""Provider failures -> the gateway's error tree (app/domain/errors.py), at the provider boundary.

Two sources, one result: a provider's own HTTP error reply (the relay reads it; the full path falls
back to it when LiteLLM's exception class says no more than a status), and LiteLLM's (or the openai
SDK's) exception classes, mapped by one table in the spirit of httpx's ``map_httpcore_exceptions``.
Messages built here quote provider text; ``providers/quoting.py`` makes them safe before anyone
else sees them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from app.domain.errors import (
    ContextLengthExceeded,
    GatewayError,
    ProviderRejected,
    RateLimited,
    UpstreamAuthentication,
    UpstreamModelNotFound,
    UpstreamOverloaded,
    UpstreamTimeout,
    UpstreamUnavailable,
)


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


Translate = Callable[[BaseException, str], GatewayError]


@functools.cache  # built once, on the first failure: LiteLLM's classes exist by then
def _litellm_table() -> list[tuple[type[BaseException] | tuple[type[BaseException], ...], Translate]]:
    """LiteLLM's exception classes, most specific first, each with its translation."""
    # The provider layer has imported LiteLLM already; importing here keeps this module light.
    import litellm

    return [
        (litellm.ContextWindowExceededError, lambda _e, m: ContextLengthExceeded(m)),
        (
            (litellm.AuthenticationError, litellm.PermissionDeniedError),
            lambda _e, _m: UpstreamAuthentication("The provider rejected the gateway's credentials."),
        ),
        (
            litellm.NotFoundError,
            lambda _e, m: UpstreamModelNotFound(f"The provider does not know the configured model: {m}"),
        ),
        (litellm.RateLimitError, lambda e, m: RateLimited(m, retry_after=_seconds(_retry_after_header(e)))),
        (litellm.Timeout, lambda _e, _m: UpstreamTimeout("The provider did not answer in time.")),
        (
            (litellm.BadRequestError, litellm.UnprocessableEntityError),
            lambda e, m: ProviderRejected(m, code=_provider_code(e)),
        ),
        (
            litellm.APIConnectionError,
            lambda _e, m: UpstreamUnavailable(f"The provider could not be reached or its answer broke off: {m}"),
        ),
    ]


def from_litellm(exc: BaseException) -> GatewayError:
    """Translate a LiteLLM (or openai SDK) exception into the most specific GatewayError."""
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
    status = getattr(exc, "status_code", None)
    if status in (401, 403) and not isinstance(exc, litellm.ContextWindowExceededError):
        # Whatever class LiteLLM picked (a 403 can arrive as a plain APIError): the provider refused our key.
        return UpstreamAuthentication("The provider rejected the gateway's credentials.")
    for kinds, translate in _litellm_table():
        if isinstance(exc, kinds):
            return translate(exc, message)
    if isinstance(status, int) and (status == 429 or status >= 500):
        return from_provider_reply(status, message, None, _retry_after_header(exc))
    if isinstance(exc, litellm.APIError | litellm.ServiceUnavailableError | litellm.InternalServerError):
        return UpstreamOverloaded(f"The provider failed: {message}")
    return UpstreamUnavailable(f"The provider's answer could not be read: {message}")
