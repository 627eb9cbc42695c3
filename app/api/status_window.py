"""The status window of an SSE answer, waited out by the response itself before it starts.

A stream's status window (``streaming.status_window_s``) holds its answer's status back until the
first event has come or the window has ended, so that a provider error reported at once is
answered with its real status instead of a 200 and an error event. The handler sends the provider
call off and returns its response at once (``open_window``); the response waits out the rest of
the window before it starts. So when the first chunk comes inside the window, as it usually does,
everything about the answer that could be done before it (the handler's return, the response's
conversion) has been, and the chunk waits only for the response's start and writer
(loadtests/README.md has the figures). A provider error that comes inside the window is raised
from the response before anything was sent: the exception handlers around the route answer it, as
they answer the handler's own errors. A client that leaves inside the window gets the request
logged as 499, as every route answers a client that left before its answer started
(``client_gone``).
"""

from __future__ import annotations

import time
from typing import Any, Final

from litestar import Response
from litestar.types import Message, Scope, Send

from app.core.context import context_of
from app.core.stream import ChatStream
from app.domain.events import CLIENT_DISCONNECTED
from app.transport.disconnect import ClientGone, DisconnectWatch

#: The status of a request whose client left before its answer started (nginx's; never sent).
CLIENT_CLOSED_REQUEST: Final = 499


def client_gone(scope: Scope) -> Response[Any]:
    """The answer to a request whose client left before it started: nothing reaches the client, and
    the request's log line says why."""
    context_of(scope).outcome = CLIENT_DISCONNECTED
    return Response(content=b"", status_code=CLIENT_CLOSED_REQUEST)


async def open_window(stream: ChatStream, window_s: float) -> float:
    """Open ``stream``'s status window of ``window_s``; when it ends (``time.monotonic``).

    With a window, the provider call goes out now, before the response is built (its first event
    then has that much less to wait for). Without one the response starts at once, and its pump
    pulls the first event in its own task: the call goes out in the same loop turn as the
    response's start, and the first chunk is written by the task it wakes, not handed from a task
    of its own to the response's (each hand-over a whole loop turn, which under load is the time to
    first byte: loadtests/README.md has the figures).
    """
    ends_at = time.monotonic() + window_s
    if window_s > 0:
        await stream.first_event(0)
    return ends_at


async def wait_window(stream: ChatStream, watch: DisconnectWatch, ends_at: float, scope: Scope, send: Send) -> bool:
    """Until ``stream``'s first event or ``ends_at``; True when the answer may start.

    Raises the first event's error (the stream closed with its outcome, before anything was sent).
    False when the client left meanwhile: the stream is closed as the client's and the request
    answered (for its log line) with 499.
    """
    if not stream.first_pending:
        return True  # no window: the pump pulls the first event (``open_window``)
    try:
        with watch.guard():
            first = await stream.first_event(ends_at - time.monotonic())
    except ClientGone:
        context_of(scope).outcome = CLIENT_DISCONNECTED
        stream.close(CLIENT_DISCONNECTED)
        start: Message = {
            "type": "http.response.start",
            "status": CLIENT_CLOSED_REQUEST,
            "headers": [(b"content-length", b"0")],
        }
        await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return False
    if first is not None and first.error is not None:
        stream.mark_first_byte()  # the JSON error about to be written is this stream's first byte
        stream.close(first.error.outcome)
        raise first.error
    return True
