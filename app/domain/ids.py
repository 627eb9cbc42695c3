"""Random identifiers (a request's, a stream's, a lease's, a response's): the OS's random bytes,
read a block at a time.

Each ``os.urandom`` is a ``getrandom()`` system call, and every request took three of them (its id,
its stream's, its admission lease's) besides the few the work itself needs. Here one read serves
256 ids of 16 bytes. The bytes are the OS's generator's, each handed out once; a forked child
starts with an empty block (``os.register_at_fork``), so that a parent and its child never hand out
the same id.
"""

from __future__ import annotations

import os
import threading
from typing import Final

BLOCK_BYTES: Final = 4096


class RandomBytes:
    """The OS's random bytes, read ``block`` at a time and handed out in order, never twice."""

    __slots__ = ("_at", "_block", "_buffer", "_lock")

    def __init__(self, block: int = BLOCK_BYTES) -> None:
        self._block = block
        self._buffer = b""
        self._at = 0
        self._lock = threading.Lock()  # uncontended (the loop's thread): tens of nanoseconds

    def hex(self, nbytes: int) -> str:
        """``nbytes`` random bytes as ``2 * nbytes`` hex digits (as ``os.urandom(nbytes).hex()``)."""
        with self._lock:
            at = self._at
            end = at + nbytes
            if end > len(self._buffer):
                self._buffer = os.urandom(max(self._block, nbytes))
                at, end = 0, nbytes
            self._at = end
            return self._buffer[at:end].hex()

    def forget(self) -> None:
        """Drop what is left of the block (a forked child must not repeat its parent's ids)."""
        self._buffer = b""
        self._at = 0
        self._lock = threading.Lock()


#: The process's one source: ids are drawn on every request from everywhere, as from ``os.urandom``.
_SOURCE: Final = RandomBytes()
os.register_at_fork(after_in_child=_SOURCE.forget)


def random_hex(nbytes: int) -> str:
    """``nbytes`` of the OS's random bytes as hex, as ``os.urandom(nbytes).hex()`` without a system call
    each time."""
    return _SOURCE.hex(nbytes)
