"""Noticing the client leave an HTTP request, with one watcher task for the request's whole life.

The watcher reads ``receive`` (the body has been read, so the next message is the disconnect) and,
when the client has gone, cancels the request's own task, but only while that task waits inside a
``watch.guard()`` block. Outside those blocks it just records that the client left, and the next
``guard()`` raises ``ClientGone`` at once. Cancelling only at awaits inside a guard means the
cancellation always lands where it is expected and turns into ``ClientGone``, never somewhere in the
framework between the handler and the response body.

One watcher instead of one per phase: the handler's upstream call, its status window and the
response body share it, which matters on a gateway where every request is a short stream. Under
this project's server (``guarded.py``) the watcher is not even a task: the connection's protocol
reports its loss to the request's ``DisconnectHook`` (in the request scope's state), which saves
every request a task's creation, its first step and its cancellation. Elsewhere (another server, a
wrapped ``receive``) a task reads ``receive`` as described above.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Final

from litestar.types import Receive

from app.domain.events import ClientLeft


class ClientGone(ClientLeft):
    """The client closed the connection."""


#: Where the server's protocol leaves a request's ``DisconnectHook`` in its scope's state.
DISCONNECT_HOOK: Final = "chat.disconnect_hook"


class DisconnectHook:
    """One request's line from its connection: ``fire`` when the connection is lost (guarded.py).

    ``loop``: the connection's, which the request's task runs on; the watch reads it from here
    rather than ask for the running loop (on Python 3.11 a ``getpid()`` system call each time)."""

    __slots__ = ("callback", "loop", "lost")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lost = False
        self.callback: Callable[[], None] | None = None

    def fire(self) -> None:
        self.lost = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


def _hook_of(receive: Receive) -> DisconnectHook | None:
    """The hook of the request whose server ``receive`` this is (a cycle's bound method), if any."""
    scope = getattr(getattr(receive, "__self__", None), "scope", None)
    if not isinstance(scope, dict):
        return None
    hook = scope.get("state", {}).get(DISCONNECT_HOOK)
    return hook if type(hook) is DisconnectHook else None


async def wait_disconnect(receive: Receive) -> None:
    # The body has been read, so the next message the server delivers is the disconnect (uvicorn
    # also delivers it once the response is complete): the loop is bounded by the request's life.
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatch:
    """Create in the request's task after its body was read; ``stop()`` when the response is done."""

    __slots__ = ("_armed", "_cancelled", "_hook", "_owner", "_stopped", "_task", "gone")

    def __init__(self, receive: Receive) -> None:
        self._hook = hook = _hook_of(receive)
        owner = asyncio.current_task(None if hook is None else hook.loop)
        assert owner is not None, "a DisconnectWatch belongs to the task that serves the request"
        self._owner = owner
        self._armed = False
        self._cancelled = False
        self._stopped = False
        self.gone = False
        self._task: asyncio.Task[None] | None = None
        if hook is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(receive))
        elif hook.lost:
            # Lost already (while the request was being admitted): found out on the loop's next turn,
            # as the task would, so that the first guarded wait has begun and its work (which owns
            # the admission from then on) ends the way it does for a client that leaves mid-call.
            hook.loop.call_soon(self._lost)
        else:
            hook.callback = self._lost

    async def _watch(self, receive: Receive) -> None:
        try:
            await wait_disconnect(receive)
        except asyncio.CancelledError:
            if self._stopped:
                # Ended by stop(), the usual end: returning instead of letting the task keep the
                # CancelledError matters. Its traceback holds this frame, the frame holds the watch,
                # the watch its task and the task the error: a reference cycle that took the request's
                # whole object graph (stream, relay, response) with it to the cyclic collector.
                return
            raise
        self._lost()

    def _lost(self) -> None:
        if self._stopped:
            return
        self.gone = True
        if self._armed:
            self._cancelled = True
            self._owner.cancel()

    def guard(self) -> DisconnectWatch:
        return self

    def __enter__(self) -> None:
        if self.gone:
            raise ClientGone
        self._armed = True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._armed = False
        if self._cancelled:
            # Our own cancellation, for a client that left (not the server shutting the task down),
            # whatever the guarded code turned it into.
            self._cancelled = False
            self._owner.uncancel()
            raise ClientGone from None

    def stop(self) -> None:
        self._armed = False
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        if self._hook is not None:
            self._hook.callback = None  # the hook outlives the response in the scope: no reference back
