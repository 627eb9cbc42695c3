"""Closing a stream's source (the provider call behind it) from wherever the stream ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from app.domain.chunks import Chunk

_CLOSING: set[asyncio.Task[None]] = set()  # keeps scheduled cleanups alive until they ran


def close_soon(source: AsyncIterator[Chunk]) -> None:
    """Close ``source`` on the next loop turn; nobody may be pulling from it (a puller is cancelled
    instead). A generator is suspended then, and its cleanup closes the provider's connection."""
    aclose = getattr(source, "aclose", None)
    if aclose is None or getattr(source, "ag_frame", True) is None:
        return  # nothing to close, or a generator that has already run its cleanup
    task = asyncio.get_running_loop().create_task(_quietly(aclose()))
    _CLOSING.add(task)
    task.add_done_callback(_CLOSING.discard)


async def close_quietly(source: AsyncIterator[Chunk]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await _quietly(aclose())


async def _quietly(closing: Awaitable[Any]) -> None:
    try:
        await closing
    except Exception:  # a provider's cleanup failing must not surface as an unretrieved task error
        pass
