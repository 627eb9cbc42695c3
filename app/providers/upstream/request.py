"""A deployment's POST, prepared once per deployment for both HTTP versions."""

from __future__ import annotations

from typing import Any

from yarl import URL

#: Headers the client frames itself: a caller's copy would contradict (or smuggle past) ours.
_OWN_HEADERS = ("host", "content-length", "transfer-encoding", "connection")


class RequestTemplate:
    """One deployment's POST, prepared once: everything but the body and its length."""

    __slots__ = ("_h1_head", "_h2_headers")

    def __init__(self, url: URL, headers: dict[str, Any]) -> None:
        default_port = 443 if url.scheme == "https" else 80
        host = url.host if url.port in (None, default_port) else f"{url.host}:{url.port}"
        lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"Host: {host}"]
        h2_headers = [
            (":method", "POST"),
            (":scheme", url.scheme),
            (":authority", str(host)),
            (":path", url.raw_path_qs),
        ]
        for name, value in headers.items():
            text = f"{name}: {value}"
            if "\r" in text or "\n" in text:
                raise ValueError(f"header {name!r} holds a line break")
            if name.lower() not in _OWN_HEADERS:
                lines.append(text)
                h2_headers.append((name.lower(), str(value)))
        self._h1_head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._h2_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in h2_headers]

    @property
    def head(self) -> bytes:
        """The HTTP/1.1 request line and headers, up to (not including) Content-Length."""
        return self._h1_head

    def h1(self, body: bytes) -> bytes:
        return b"%bContent-Length: %d\r\n\r\n%b" % (self._h1_head, len(body), body)

    def h2(self, body: bytes) -> list[tuple[bytes, bytes]]:
        return [*self._h2_headers, (b"content-length", str(len(body)).encode())]
