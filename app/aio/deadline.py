"""``asyncio.timeout(delay)`` on a loop the caller already holds.

On Python 3.11 ``asyncio.timeout`` asks for the running loop three times (creating the context,
entering it, arming its timer), and each ask is a ``getpid()`` system call (the fork check of
``get_running_loop``). The provider call's deadline is taken once per request on the hot path, so it
is this: the same rules (the task is cancelled at the deadline, and that cancellation, and only
that one, leaves as ``TimeoutError``; a cancellation from elsewhere stays a cancellation), on the
loop it is given.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Deadline:
    """``async with Deadline(loop, delay):`` as ``async with asyncio.timeout(delay):``."""

    __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self._loop = loop
        self._delay = delay
        self._expired = False
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task(self._loop)  # with the loop given: a lookup, no system call
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_later(self._delay, self._expire)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self._task
        # Our own cancellation is undone; only if no other one is pending does it become a timeout.
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._handle = None
        if self._task is not None:
            self._task.cancel()
            self._expired = True
