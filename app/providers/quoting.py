"""Provider text is quoted, never trusted: secrets redacted, length capped, and hidden in production.

A provider's error message is not ours: some repeat the request's credentials back ("Incorrect API
key provided: sk-..."), and proxies in front of them echo whole request headers. Every provider
error passes through ``ProviderText.quote`` at the provider boundary, before a client, a log line
or a span can see it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from app.domain.errors import (
    ContextLengthExceeded,
    GatewayError,
    ProviderRejected,
    RateLimited,
    UpstreamAuthentication,
    UpstreamModelNotFound,
    UpstreamOverloaded,
    UpstreamTimeout,
)

REDACTED: Final = "[redacted]"
#: Longest provider text a client or a log line gets: enough for any real error message.
MAX_QUOTE_CHARS: Final = 500
#: Shortest configured secret that is redacted literally (shorter ones would redact ordinary words).
MIN_SECRET_CHARS: Final = 6

_PATTERNS: Final = (
    # "Authorization: Bearer abc", "bearer abc"
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+"), rf"\1 {REDACTED}"),
    # OpenAI-style keys: sk-..., sk-proj-..., and the other vendors' "<prefix>-<long token>" keys
    (re.compile(r"\b(sk|pk|rk|xai|gsk|hf|AIza)[-_][A-Za-z0-9_\-]{6,}"), rf"\1-{REDACTED}"),
    # "x-api-key: abc", "api_key=abc", "\"apiKey\": \"abc\"", "access_token=abc", "password: abc"
    (
        re.compile(
            r"(?i)\b(x-api-key|api[-_]?key|apikey|authorization|access[-_]?token|secret|password|token)"
            r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"',;&}]+)"
        ),
        rf"\1\2{REDACTED}",
    ),
)

_GENERIC: Final[dict[type[GatewayError], str]] = {
    ContextLengthExceeded: "The request is larger than the model's context window.",
    RateLimited: "The provider's rate limit was reached.",
    UpstreamAuthentication: "The provider rejected the gateway's credentials.",
    UpstreamModelNotFound: "The provider does not know the configured model.",
    UpstreamOverloaded: "The provider failed or is overloaded.",
    UpstreamTimeout: "The provider did not answer in time.",
}


class ProviderText:
    """Redacts configured secrets and credential-shaped tokens; in production, replaces the message."""

    def __init__(self, secrets: Iterable[str] = (), *, production: bool = False) -> None:
        literal = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._secrets = re.compile("|".join(re.escape(s) for s in literal)) if literal else None
        self._production = production

    def redact(self, text: str) -> str:
        # Secrets first, before the shape patterns cut a literal key in two.
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        if len(text) > MAX_QUOTE_CHARS:
            text = text[:MAX_QUOTE_CHARS] + "..."
        return text

    def quote(self, error: GatewayError) -> GatewayError:
        """``error`` with its message made safe; the provider's (redacted) words kept as ``detail``."""
        if error.quoted:
            return error
        safe = self.redact(error.message)
        error.detail = safe
        if self._production:
            safe = self._generic(error)
        error.message = safe
        error.args = (safe,)
        error.quoted = True
        return error

    @staticmethod
    def _generic(error: GatewayError) -> str:
        for kind in type(error).__mro__:
            if kind in _GENERIC:
                return _GENERIC[kind]
        if isinstance(error, ProviderRejected):
            return f"The provider rejected the request ({error.code})."
        return "The provider's answer could not be used."
