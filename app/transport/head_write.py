"""A response's head written together with its body's first bytes: one write instead of two.

uvicorn writes a response's status line and headers the moment the application starts the
response, and the body with each body message after it: a JSON response is two writes, each a
system call that on a local connection also runs the receiver's side of TCP. The application
sends the body right behind the start when it has it (a JSON answer, an SSE stream whose first
chunk came inside the status window), so the cycle's first write (its head) is held until the next
write, or the end of the event loop's turn at the latest (a stream that starts before its first
chunk, a HEAD response, an interim ``100 Continue``), and goes out with it.
"""

from __future__ import annotations

import asyncio
from typing import Any


class HeadHeldTransport:
    """The transport of one request's cycle (``GuardedHttpProtocol`` gives each cycle its own)."""

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first = False
            self._held = data
            self._loop.call_soon(self.flush)
            return
        if self._held:
            data, self._held = self._held + data, b""
        self._transport.write(data)

    def flush(self) -> None:
        if self._held:
            held, self._held = self._held, b""
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
