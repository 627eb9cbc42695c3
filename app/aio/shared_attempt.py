"""One attempt that several callers await (behind ``asyncio.shield``), whose error nobody may be left to read.

Each caller has its own deadline, and all of them may give up (a timeout, a client that left) before
the attempt fails; its error is still theirs to see, not the loop's to log as "never retrieved", once
per attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _seen(attempt: asyncio.Future[Any]) -> None:
    if not attempt.cancelled():
        attempt.exception()  # marks it retrieved; whoever awaits the attempt still gets it raised


def shared_attempt(work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """``work`` running on its own, to be awaited through ``asyncio.shield`` by any number of callers."""
    attempt = asyncio.ensure_future(work)
    attempt.add_done_callback(_seen)
    return attempt
