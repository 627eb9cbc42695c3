"""Closing a stream's source (the provider call behind it) from wherever the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from app.domain.chunks import Chunk
from app.providers.base import close_quietly

__all__ = ["close_quietly", "close_soon"]

_CLOSING: set[asyncio.Task[None]] = set()  # keeps scheduled cleanups alive until they ran


def close_soon(source: AsyncIterator[Chunk]) -> None:
    """Close ``source`` on the next loop turn; nobody may be pulling from it (a puller is cancelled
    instead). A generator is suspended then, and its cleanup closes the provider's connection."""
    if getattr(source, "aclose", None) is None or getattr(source, "ag_frame", True) is None:
        return  # nothing to close, or a generator that has already run its cleanup
    task = asyncio.get_running_loop().create_task(close_quietly(source))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)
