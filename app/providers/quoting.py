"""Provider text is quoted, never trusted: secrets redacted, length capped, and hidden in production.

A provider's error message is not ours: some repeat the request's credentials back ("Incorrect API
key provided: sk-..."), proxies in front of them echo whole request headers, and some echo them
encoded (a Basic credential is base64, a query string percent-encoded). Every provider error passes
through ``ProviderText.quote`` at the provider boundary, before a client, a log line or a span can
see it; unexpected exceptions shown in development go through ``redact`` too.

Every configured secret is redacted in its plain form, percent-encoded (as ``quote`` and
``quote_plus`` write it, and with every byte escaped, either hex case), and base64-encoded in both
alphabets (standard and URL-safe), also where it sits inside a longer base64 string: at each of the
three byte alignments it can have there, the characters that encode only the secret's bits are the
same whatever surrounds it, and those are what is matched.
"""

from __future__ import annotations

import base64
import re
import traceback
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, quote_plus

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


_URLSAFE: Final = str.maketrans("+/", "-_")


def _base64_cores(secret: bytes) -> set[str]:
    """What ``secret`` looks like inside any base64 text, at each of the 3 byte alignments, in both
    alphabets: the characters whose 6 bits all come from the secret (those next to its neighbours
    depend on them, and are left out)."""
    cores: set[str] = set()
    n = len(secret)
    for align in range(3):
        encoded = base64.b64encode(b"\0" * align + secret).decode("ascii")
        first = -(-8 * align // 6)  # the first character that starts inside the secret
        last = 8 * (align + n) // 6  # one past the last character that ends inside it
        core = encoded[first:last]
        if len(core) >= MIN_SECRET_CHARS:
            cores.add(core)
            cores.add(core.translate(_URLSAFE))
    return cores


def secret_forms(secret: str) -> set[str]:
    """Every form of ``secret`` redacted: plain, percent-encoded, base64 (standard and URL-safe)."""
    raw = secret.encode()
    every_byte = "".join(f"%{b:02X}" for b in raw)
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), every_byte, every_byte.lower()}
    forms |= {form.lower() for form in (quote(secret, safe=""), quote_plus(secret)) if "%" in form}
    forms |= _base64_cores(raw)
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


class ProviderText:
    """Redacts configured secrets and credential-shaped tokens; in production, replaces the message."""

    def __init__(self, secrets: Iterable[str] = (), *, production: bool = False) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_CHARS:
                forms |= secret_forms(secret)
        # Longest first, so that a form is never cut by a shorter one it contains.
        literal = sorted(forms, key=len, reverse=True)
        self._secrets = re.compile("|".join(re.escape(s) for s in literal)) if literal else None
        self._production = production

    @property
    def production(self) -> bool:
        return self._production

    def redact_secrets(self, text: str) -> str:
        """``text`` with every configured secret and credential-shaped token redacted, whatever its length."""
        # Secrets first, before the shape patterns cut a literal key in two.
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def redact(self, text: str) -> str:
        """What a client or a log line may quote: redacted, and capped at MAX_QUOTE_CHARS."""
        text = self.redact_secrets(text)
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


def traceback_text(exc: BaseException, quote: ProviderText | None) -> str:
    """``exc``'s traceback for a log line, redacted: a library's exception may quote a provider (or a key)."""
    text = "".join(traceback.format_exception(exc))
    return quote.redact_secrets(text) if quote is not None else text
