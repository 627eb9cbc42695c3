"""A request's head (request line and header lines) is bounded in size while it is parsed.

httptools (llhttp) bounds none of it: a header value is accumulated, chunk by chunk, until its line
ends, so 40 header lines of 1 MB each cost 40 MB (and quadratic copying) before the app is even
called. The guarded protocol (``guarded.py``) feeds the parser at most ``MAX_HEAD_BYTES`` of one
request's head and checks each part as the parser reports it:

- the request line's target over ``MAX_REQUEST_LINE_BYTES`` -> 414 ``uri_too_long``;
- header lines over ``MAX_HEADER_BYTES`` in all, or more than ``MAX_HEADER_LINES`` -> 431
  ``headers_too_large``;
- an HTTP/1.1 request without exactly one ``Host`` header -> 400 (RFC 9112 3.2);
- anything else the parser refuses -> 400.

Each answer is the contract's JSON error body with ``X-Request-ID`` and ``Connection: close``.
"""

from __future__ import annotations

from typing import Final

import msgspec

from app.domain.errors import ErrorBody, ErrorObject
from app.domain.ids import random_hex

MAX_REQUEST_LINE_BYTES: Final = 8 * 1024
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_HEADER_LINES: Final = 100
#: The most of one request's head the parser is ever fed: the request line and the header lines at
#: their limits, plus their line ends. Whatever is bigger is refused before it reaches the parser.
MAX_HEAD_BYTES: Final = MAX_REQUEST_LINE_BYTES + MAX_HEADER_BYTES + 2 * (MAX_HEADER_LINES + 2)
#: How long a refused connection's further bytes are read and dropped after the answer, so that a
#: client still sending its head can read the answer instead of a reset.
LINGER_S: Final = 1.0


class HeadRefused(Exception):
    """A request head the server will not take: its status, code and message for the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def uri_too_long() -> HeadRefused:
    return HeadRefused(414, "uri_too_long", f"The request line is longer than {MAX_REQUEST_LINE_BYTES} bytes.")


def headers_too_large() -> HeadRefused:
    return HeadRefused(
        431,
        "headers_too_large",
        f"The request headers are larger than {MAX_HEADER_BYTES} bytes or more than {MAX_HEADER_LINES} lines.",
    )


def bad_request(message: str = "The request is not valid HTTP/1.1.") -> HeadRefused:
    return HeadRefused(400, "invalid_request", message)


_REASONS: Final = {400: b"Bad Request", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


def valid_request_id(incoming: str | None) -> str:
    """The client's X-Request-ID when it is a sane one, else a new one."""
    if incoming and len(incoming) <= 128 and incoming.isprintable():
        return incoming
    return random_hex(16)


def request_id_of(headers: list[tuple[bytes, bytes]] | None) -> str:
    for name, value in headers or ():
        if name == b"x-request-id":
            return valid_request_id(value.decode("latin-1"))
    return valid_request_id(None)


def reply(refusal: HeadRefused, request_id: str) -> bytes:
    """The whole HTTP/1.1 answer to a refused head: status line, headers, the contract's body."""
    body = msgspec.json.encode(
        ErrorBody(ErrorObject(message=refusal.message, type="invalid_request_error", code=refusal.code))
    )
    reason = _REASONS.get(refusal.status, b"Bad Request")
    return b"".join(
        [
            b"HTTP/1.1 %d %b\r\n" % (refusal.status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %b\r\n" % request_id.encode("latin-1"),
            b"connection: close\r\n\r\n",
            body,
        ]
    )
