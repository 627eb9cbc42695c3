"""Gateway keys: the one place where a request's caller identity is resolved.

Rate limits, cache scope and stream ownership all key on ``Caller.scope``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

import msgspec

from app.errors import Unauthenticated

SUBPROTOCOL = "chat.v1"
BEARER_PREFIX = "bearer."


class Caller(msgspec.Struct, frozen=True):
    #: A short, non-reversible id of the key ("anonymous" when the gateway has no keys).
    scope: str


ANONYMOUS = Caller(scope="anonymous")


def _scope_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class GatewayKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k for k in (k.strip() for k in keys) if k)

    @classmethod
    def from_env(cls, env_name: str, environ: Mapping[str, str]) -> GatewayKeys:
        return cls(environ.get(env_name, "").split(",") if env_name else ())

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, presented: str | None) -> Caller:
        if not self.enabled:
            return ANONYMOUS
        if presented:
            # Compare against every key in constant time so timing does not reveal which one nearly matched.
            matched = False
            for key in self._keys:
                matched |= hmac.compare_digest(presented.encode(), key.encode())
            if matched:
                return Caller(scope=_scope_of(presented))
        raise Unauthenticated("Missing or invalid gateway API key.")

    def from_headers(self, authorization: str | None, x_api_key: str | None = None) -> Caller:
        return self.check(bearer_token(authorization) or x_api_key)

    def from_websocket(self, subprotocols: Iterable[str], authorization: str | None) -> Caller:
        """Browsers cannot set headers on a WebSocket, so the key may come as a ``bearer.<key>`` subprotocol."""
        for proto in subprotocols:
            if proto.startswith(BEARER_PREFIX):
                return self.check(proto[len(BEARER_PREFIX) :])
        return self.from_headers(authorization)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
