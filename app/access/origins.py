"""Which browser origins may open the chat WebSocket (cross-site WebSocket hijacking protection).

Browsers send ``Origin`` on every WebSocket handshake and, unlike ``fetch``, apply no CORS check to
it: without this, any page a user visits could drive the socket, and ride a key the page stored.
Allowed: no ``Origin`` at all (not a browser), the gateway's own origin (the built-in page), and
the origins in ``server.cors_origins`` (``*`` allows every origin, as it does for HTTP CORS).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit


class OriginPolicy:
    def __init__(self, allowed: Iterable[str]) -> None:
        allowed = [a.strip().rstrip("/").lower() for a in allowed]
        self._any = "*" in allowed
        self._allowed = frozenset(a for a in allowed if a != "*")

    def allows(self, origin: str | None, host: str | None, scheme: str) -> bool:
        if origin is None:
            return True
        origin = origin.strip().rstrip("/").lower()
        if self._any or origin in self._allowed:
            return True
        return _same_origin(origin, host, scheme)


def _same_origin(origin: str, host: str | None, scheme: str) -> bool:
    """``origin`` names this server as the client reached it (the Host header, ws->http, wss->https)."""
    if not host:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    web_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    if parts.scheme != web_scheme or not parts.netloc:
        return False
    default_port = "443" if web_scheme == "https" else "80"
    return _with_port(parts.netloc, default_port) == _with_port(host.lower(), default_port)


def _with_port(netloc: str, default_port: str) -> str:
    if netloc.startswith("["):  # IPv6 literal
        return netloc if "]:" in netloc else f"{netloc}:{default_port}"
    return netloc if ":" in netloc else f"{netloc}:{default_port}"
