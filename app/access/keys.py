"""Gateway keys: the one place where a request's caller identity is resolved.

Rate limits, cache scope and stream ownership all key on ``Caller``: ``scope`` (a short digest)
keys the cache and streams, ``policy`` says what the key may do and how it is limited. Keys are
held only as SHA-256 digests; a presented key is hashed once and compared with every digest in
constant time, so neither timing nor memory ever shows a key, and the config may carry digests.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import msgspec

from app.access.policy import UNLIMITED, KeyPolicy
from app.domain.errors import Unauthenticated

if TYPE_CHECKING:
    from app.config.settings import Settings

SUBPROTOCOL = "chat.v1"
BEARER_PREFIX = "bearer."


class Caller(msgspec.Struct, frozen=True):
    #: A short, non-reversible id of the key ("anonymous" when the gateway has no keys).
    scope: str
    #: What this key may use and its limits; ``policy.name`` is the configured name.
    policy: KeyPolicy = UNLIMITED

    @property
    def name(self) -> str:
        return self.policy.name

    @property
    def bucket(self) -> str:
        """What limits count on: a named key's name; each ``default`` key on its own."""
        name = self.policy.name
        return name if name != "default" else f"default.{self.scope}"


ANONYMOUS = Caller(scope="anonymous")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class GatewayKeys:
    def __init__(self, keys: Iterable[str], *, policy: KeyPolicy = UNLIMITED) -> None:
        # (digest, caller) per key; the key text itself is not kept.
        self._entries: list[tuple[bytes, Caller]] = []
        for key in (k.strip() for k in keys):
            if key:
                self._add(_digest(key), policy)
        #: Who calls when the gateway has no keys: still limited by [rate_limit]'s defaults.
        self.anonymous = ANONYMOUS if policy is UNLIMITED else Caller(scope="anonymous", policy=policy)

    def _add(self, digest: bytes, policy: KeyPolicy) -> None:
        self._entries.append((digest, Caller(scope=digest.hex()[:16], policy=policy)))

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str]) -> GatewayKeys:
        """``server.api_keys_env``'s keys as ``default`` and every ``[[keys]]`` entry under its name."""
        rl = settings.rate_limit
        default = KeyPolicy(
            "default",
            requests_per_minute=rl.requests_per_minute,
            tokens_per_minute=rl.tokens_per_minute,
            concurrent_streams=rl.concurrent_streams,
        )
        env_name = settings.server.api_keys_env
        keys = cls(environ.get(env_name, "").split(",") if env_name else (), policy=default)
        for entry in settings.keys:
            policy = KeyPolicy(
                entry.name,
                models=tuple(entry.models) if entry.models is not None else None,
                requests_per_minute=_pick(entry.requests_per_minute, rl.requests_per_minute),
                tokens_per_minute=_pick(entry.tokens_per_minute, rl.tokens_per_minute),
                concurrent_streams=_pick(entry.concurrent_streams, rl.concurrent_streams),
                budget_usd=entry.budget_usd,
                budget_window=entry.budget_window,
            )
            if entry.key_sha256:
                keys._add(bytes.fromhex(entry.key_sha256), policy)
            else:
                keys._add(_digest(environ.get(entry.key_env, "").strip()), policy)
        return keys

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def check(self, presented: str | None) -> Caller:
        if not self.enabled:
            return self.anonymous
        if presented:
            digest = _digest(presented)
            # Compare against every digest in constant time so timing does not reveal which one nearly matched.
            found: Caller | None = None
            for known, caller in self._entries:
                if hmac.compare_digest(digest, known) and found is None:
                    found = caller
            if found is not None:
                return found
        raise Unauthenticated("Missing or invalid gateway API key.")

    def from_headers(self, authorization: str | None, x_api_key: str | None = None) -> Caller:
        return self.check(bearer_token(authorization) or x_api_key)

    def from_websocket(self, subprotocols: Iterable[str], headers: Mapping[str, str]) -> Caller:
        """As over HTTP (``Authorization: Bearer``, ``X-API-Key``, from the handshake's headers), and,
        since browsers cannot set headers on a WebSocket, as a ``bearer.<key>`` subprotocol. Every
        WebSocket API reads its caller here, so none can accept fewer ways than HTTP does."""
        for proto in subprotocols:
            if proto.startswith(BEARER_PREFIX):
                return self.check(proto[len(BEARER_PREFIX) :])
        return self.from_headers(headers.get("authorization"), headers.get("x-api-key"))


def _pick(own: int | None, default: int) -> int:
    return default if own is None else own


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
